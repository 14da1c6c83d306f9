"""What a ``POST /predict`` body may hold, and the image in it: every refusal is a :class:`Refusal` with one line.

Three forms, one image each: a multipart upload with the field ``image`` (a PNG, JPEG, GIF, BMP, WebP, ...
file), JSON ``{"image": "<base64 of such a file>"}`` (a ``data:`` URL too), or JSON ``{"pixels": [[...]]}``
(the model's height x width, or height x width x channels, of numbers from 0 to 255). Beside the image, a
field or key ``invert`` (``auto``, ``yes``, ``no``) or ``fit`` (``frame``, ``digit``) sets predict's option of
that name for this request (the page asks for ``fit=digit`` for a drawing).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import numpy as np

from lit_mnist.images import FIT_CHOICES, INVERT_CHOICES, ImageSource

__all__ = ["FORMS", "Refusal", "image_source", "request_options"]

#: How to send an image: the end of every refusal that is about the form of the request.
FORMS = (
    'send a multipart field "image" (curl -F image=@digit.png), or JSON {"image": "<base64 of a PNG/JPEG>"} '
    'or {"pixels": [[0-255, ...], ...]}'
)


class Refusal(Exception):
    """A request the server answers with ``status`` and ``{"detail": detail}`` (one line)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def image_source(payload: Any, input_shape: tuple[int, int, int]) -> ImageSource:
    """The image of a request's payload (a parsed form or JSON object): a file's bytes or a pixel array.

    Raises:
        Refusal: 400 with what is wrong: no image, two, a field of the wrong type, base64 that does not
            decode, pixels of the wrong shape, type or range.
    """
    if not isinstance(payload, Mapping):
        raise Refusal(400, f"the JSON body must be an object, got {type(payload).__name__}; {FORMS}")
    given = [key for key in ("image", "pixels") if key in payload]
    if len(given) != 1:
        what = (
            "both image and pixels" if given else f"no image (keys: {', '.join(map(str, payload)) or 'none'})"
        )
        raise Refusal(400, f"{what}; {FORMS}")
    value = payload[given[0]]
    if given[0] == "pixels":
        return _pixels(value, input_shape)
    if hasattr(value, "read") and hasattr(value, "file"):  # an uploaded file (starlette's UploadFile)
        data = value.file.read()
        if not data:
            raise Refusal(400, "image: the uploaded file is empty")
        return bytes(data)
    if isinstance(value, str):
        return _base64(value)
    raise Refusal(
        400, f"image must be an uploaded file or a base64 string, got {type(value).__name__}; {FORMS}"
    )


def request_options(payload: Any, invert: str, fit: str) -> tuple[str, str]:
    """The request's ``invert`` and ``fit`` where it gives them, else the server's.

    Raises:
        Refusal: 400 for a value that is not one of the choices.
    """
    chosen = {"invert": invert, "fit": fit}
    for key, choices in (("invert", INVERT_CHOICES), ("fit", FIT_CHOICES)):
        if isinstance(payload, Mapping) and key in payload:
            value = payload[key]
            if value not in choices:
                raise Refusal(400, f"{key} must be one of {', '.join(choices)}, got {value!r}")
            chosen[key] = str(value)
    return chosen["invert"], chosen["fit"]


def _base64(text: str) -> bytes:
    if text.startswith("data:"):  # a data URL, as a browser's FileReader or canvas.toDataURL gives
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Refusal(400, "image: not valid base64 (of a PNG, JPEG, ... file)") from None
    if not data:
        raise Refusal(400, "image: empty (no bytes after base64 decoding)")
    return data


def _pixels(value: Any, input_shape: tuple[int, int, int]) -> np.ndarray:
    channels, height, width = input_shape
    wanted = f"{height} x {width}" + (f" (or {height} x {width} x {channels})" if channels > 1 else "")
    try:
        array = np.asarray(value)
    except ValueError:  # rows of different lengths
        raise Refusal(
            400, f"pixels must be an array of {wanted} numbers from 0 to 255; its rows differ in length"
        ) from None
    if array.dtype.kind not in "iuf":
        raise Refusal(400, f"pixels must be numbers from 0 to 255, got {_kind(array)}")
    if array.shape not in ((height, width), (height, width, channels)):
        raise Refusal(
            400,
            f"pixels must be {wanted} (the model's input), got {' x '.join(map(str, array.shape)) or 'a number'}",
        )
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
        raise Refusal(
            400, f"pixels must be numbers from 0 to 255, got values from {array.min()} to {array.max()}"
        )
    return np.ascontiguousarray(np.rint(array), dtype=np.uint8)


def _kind(array: np.ndarray) -> str:
    return {"b": "true/false", "U": "strings", "O": "nested objects or nulls"}.get(
        array.dtype.kind, str(array.dtype)
    )
