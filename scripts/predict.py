"""Classify image files with a trained checkpoint: ``python scripts/predict.py --help``."""

import sys

from lit_mnist.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
