"""Search hyperparameters with Optuna, every trial a train.py run: ``python scripts/sweep.py --help``."""

import sys

from lit_mnist.cli.sweep import main

if __name__ == "__main__":
    sys.exit(main())
