"""Test a trained checkpoint: loss, accuracy, per-class accuracy, confusion matrix: ``python scripts/evaluate.py --help``."""

import sys

from lit_mnist.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
