"""The LitServe API: a request's image -> ``predict``'s preprocessing -> the model, in dynamic batches.

LitServe calls :meth:`DigitAPI.decode_request` for each request, :meth:`~DigitAPI.batch` on the requests
that arrived within ``batch_timeout`` (at most ``max_batch_size``), :meth:`~DigitAPI.predict` once per
batch and :meth:`~DigitAPI.encode_response` for each answer. A request LitServe batches fails with its
whole batch when one of these raises, so a bad request is not raised: it travels through the batch as
a :class:`~lit_mnist.serve.payload.Refusal` and becomes its own 4xx answer, and the others are answered.

``decode_request`` and ``encode_response`` carry no annotations: LitServe reads them to type the route
(an annotated ``request`` would no longer be the raw form or JSON object).
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass, field
from typing import Any

import litserve as ls
import torch
from fastapi.responses import JSONResponse
from torch import Tensor

from lit_mnist.errors import ImageError
from lit_mnist.inference import prepare_input
from lit_mnist.serve.model import ServedModel, load_runner
from lit_mnist.serve.payload import Refusal, image_source, request_options

__all__ = ["BatchCounters", "DigitAPI"]


class BatchCounters:
    """Counts that every process of the server shares (``GET /info``): requests, batches, the largest batch.

    Shared memory made before LitServe starts its processes: the inference workers receive it with the
    API object, the HTTP servers inherit it.
    """

    FIELDS = ("requests", "refused", "batches", "largest_batch")

    def __init__(self) -> None:
        self.values = multiprocessing.get_context("spawn").Array("q", len(self.FIELDS))

    def record(self, answered: int, refused: int) -> None:
        with self.values.get_lock():
            self.values[0] += answered + refused
            self.values[1] += refused
            if answered:
                self.values[2] += 1
                self.values[3] = max(self.values[3], answered)

    def snapshot(self) -> dict[str, int]:
        with self.values.get_lock():
            return {name: int(self.values[i]) for i, name in enumerate(self.FIELDS)}


@dataclass
class Batch:
    """The requests LitServe gathered into one batch, prepared images and refusals in arrival order."""

    items: list[Tensor | Refusal] = field(default_factory=list)


class DigitAPI(ls.LitAPI):
    """Classifies one image per request with ``model``, reading it exactly as ``predict`` does.

    Args:
        model: The model (:func:`lit_mnist.serve.model.open_model`); each worker loads it in :meth:`setup`.
        invert: ``predict``'s ``--invert``: ``auto``, ``yes`` or ``no``.
        fit: ``predict``'s ``--fit``: ``frame`` or ``digit``.
        max_batch_size: Requests classified together at most (1: no batching).
        batch_timeout: Seconds a batch waits for more requests.
        counters: Where the batch sizes are counted.
        threads: torch's threads in each worker on the CPU (``None``: torch's default).
    """

    def __init__(
        self,
        model: ServedModel,
        invert: str = "auto",
        fit: str = "frame",
        max_batch_size: int = 1,
        batch_timeout: float = 0.0,
        counters: BatchCounters | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/predict")
        self.model = model
        self.invert = invert
        self.fit = fit
        self.counters = counters or BatchCounters()
        self.threads = threads
        self.runner: Any = None

    def setup(self, device: str) -> None:
        if device == "cpu" and self.threads is not None:
            torch.set_num_threads(self.threads)
        self.runner = load_runner(self.model, device)

    def decode_request(self, request, **kwargs):
        """The request's image as the model's input, or the :class:`Refusal` it gets."""
        try:
            source = image_source(request, self.model.input_shape)
            invert, fit = request_options(request, self.invert, self.fit)
            return prepare_input(source, self.model.info, self.model.input_shape, invert, fit)
        except Refusal as refusal:
            return refusal
        except ImageError as err:
            return Refusal(400, f"image: {err}")

    def batch(self, inputs: list[Tensor | Refusal]) -> Batch:
        return Batch(list(inputs))

    def predict(self, x: Batch | Tensor | Refusal, **kwargs: Any) -> Any:
        """Class probabilities of each prepared image; a refusal passes through. One forward pass per batch."""
        items = x.items if isinstance(x, Batch) else [x]
        images = [item for item in items if isinstance(item, Tensor)]
        probabilities = iter(self.runner(torch.stack(images)) if images else [])
        outputs = [next(probabilities) if isinstance(item, Tensor) else item for item in items]
        self.counters.record(len(images), len(items) - len(images))
        return outputs if isinstance(x, Batch) else outputs[0]

    def encode_response(self, output, **kwargs):
        """``{"class_index", "class_name", "probabilities": {name: p}, "model"}``, or the refusal's 4xx."""
        if isinstance(output, Refusal):
            return JSONResponse({"detail": output.detail}, status_code=output.status)
        names = self.model.info.class_names
        probs = [float(p) for p in output.tolist()]
        index = max(range(len(probs)), key=probs.__getitem__)
        return {
            "class_index": index,
            "class_name": names[index] if index < len(names) else str(index),
            "probabilities": {
                (names[i] if i < len(names) else str(i)): round(p, 6) for i, p in enumerate(probs)
            },
            "model": self.model.short_hash,
        }
