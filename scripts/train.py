"""Train an MNIST-family classifier: ``python scripts/train.py --help``."""

import sys

from lit_mnist.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
