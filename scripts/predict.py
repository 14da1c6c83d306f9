"""Classify image files with a trained checkpoint: ``python scripts/predict.py --help``."""

import sys

from lit_mnist.inference import predict_main

if __name__ == "__main__":
    sys.exit(predict_main())
