"""Test a trained checkpoint: loss, accuracy, per-class accuracy, confusion matrix: ``python scripts/evaluate.py --help``."""

import sys

from lit_mnist.inference import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
