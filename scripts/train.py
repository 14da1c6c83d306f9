"""Train an MNIST-family classifier: ``python scripts/train.py --help``."""

import sys

from lit_mnist.startup import exit_code, quiet_gc_imports

with quiet_gc_imports():  # what the command imports, with the garbage collector off (lit_mnist.startup)
    from lit_mnist.cli.train import main

if __name__ == "__main__":
    sys.exit(exit_code(main()))
