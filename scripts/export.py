"""Export a trained checkpoint as ONNX or a torch.export program: ``python scripts/export.py --help``."""

import sys

from lit_mnist.startup import exit_code, quiet_gc_imports

with quiet_gc_imports():  # torch and Lightning imported with the garbage collector off (lit_mnist.startup)
    from lit_mnist.cli.export import main

if __name__ == "__main__":
    sys.exit(exit_code(main()))
