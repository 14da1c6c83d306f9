"""Export a trained checkpoint as ONNX or a torch.export program: ``python scripts/export.py --help``."""

import sys

from lit_mnist.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
