"""Serve a checkpoint or an ONNX export over HTTP, with a page to draw on: ``python scripts/serve.py --help``."""

import sys

from lit_mnist.startup import exit_code, quiet_gc_imports

with quiet_gc_imports():  # torch and Lightning imported with the garbage collector off (lit_mnist.startup)
    from lit_mnist.cli.serve import main

if __name__ == "__main__":
    sys.exit(exit_code(main()))
