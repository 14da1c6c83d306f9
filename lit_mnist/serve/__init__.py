"""Serving a trained model over HTTP with LitServe: ``POST /predict``, a page to draw a digit on, ``GET /info``.

``lit-mnist serve MODEL`` (:mod:`lit_mnist.cli.serve`) is built on these; it needs the ``serve`` extra
(``pip install 'lit_mnist[serve]'``: LitServe and python-multipart).
"""

from lit_mnist.serve.api import BatchCounters, DigitAPI
from lit_mnist.serve.app import MAX_UPLOAD_BYTES, RequestGuard, build_server
from lit_mnist.serve.model import ServedModel, load_runner, open_model
from lit_mnist.serve.payload import Refusal, image_source

__all__ = [
    "MAX_UPLOAD_BYTES",
    "BatchCounters",
    "DigitAPI",
    "Refusal",
    "RequestGuard",
    "ServedModel",
    "build_server",
    "image_source",
    "load_runner",
    "open_model",
]
