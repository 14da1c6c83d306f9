"""Reading a user's images for ``predict`` and ``serve``: any size, colour mode or polarity -> the model's input.

An image is a file, the bytes of a file (an upload) or an array of pixels (:data:`ImageSource`). A file
or its bytes are opened only if PIL recognises them as one of :data:`IMAGE_FORMATS`, decompression bombs
are refused by the pixel count in the header (before decoding), and every failure is an
:class:`~lit_mnist.errors.ImageError` with one line saying why, so that one bad image never stops the
others from being classified.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from lit_mnist.errors import ImageError
from lit_mnist.runtime import first_line

__all__ = [
    "FIT_CHOICES",
    "IMAGE_FORMATS",
    "INVERT_CHOICES",
    "ImageSource",
    "fit_digit",
    "fit_frame",
    "prepare_image",
    "read_grayscale",
    "read_rgb",
    "should_invert",
]

#: Image formats that ``predict`` opens (PIL's names); anything else is refused before decoding.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
INVERT_CHOICES = ("auto", "yes", "no")
FIT_CHOICES = ("frame", "digit")
#: An image: a file's path, a file's bytes (PNG, JPEG, ...) or a uint8 array ``(H, W)`` or ``(H, W, 3)``.
ImageSource: TypeAlias = str | Path | bytes | np.ndarray


def read_grayscale(path: ImageSource) -> np.ndarray:
    """Read an image (:data:`ImageSource`) as a float32 ``(H, W)`` array in [0, 1] (0 black, 1 white).

    Any colour mode is accepted: colour is converted to luminance, 16-bit images are scaled from
    [0, 65535], and transparent pixels are laid over a background that contrasts with the
    drawing (white under dark strokes, black under light ones). EXIF rotation is applied.

    Raises:
        ImageError: not a file, not an image of :data:`IMAGE_FORMATS`, truncated or corrupted, or
            larger than ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression bomb).
    """
    return _read(path, _to_gray)


def read_rgb(path: ImageSource) -> np.ndarray:
    """Read an image (:data:`ImageSource`) as a float32 ``(H, W, 3)`` array in [0, 1]; EXIF rotation applied.

    Any colour mode is converted with PIL's ``convert("RGB")`` (transparency is dropped).

    Raises:
        ImageError: as :func:`read_grayscale`.
    """
    return _read(path, lambda image: np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)


def _read(source: ImageSource, convert: Callable[[Image.Image], np.ndarray]) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return convert(Image.fromarray(source))
    if isinstance(source, bytes):
        if not source:
            raise ImageError("empty: no bytes")
        opener: Path | io.BytesIO = io.BytesIO(source)
    else:
        opener = Path(source)
        if not opener.is_file():
            raise ImageError("no such file" if not opener.exists() else "not a file")
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that: refuse those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(opener, formats=IMAGE_FORMATS) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened)
                return convert(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"refused: more pixels than PIL.Image.MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS}), "
            "possibly a decompression bomb"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(f"not an image in a known format ({', '.join(IMAGE_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # truncated data, broken chunks
        raise ImageError(f"cannot decode the image ({first_line(err)})") from None


def _to_gray(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float32)
        return np.clip(array / (65535.0 if array.max() > 255 else 255.0), 0.0, 1.0)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        gray = np.asarray(rgba.convert("L"), dtype=np.float32) / 255.0
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
        weight = float(alpha.sum())
        strokes = float((gray * alpha).sum()) / weight if weight > 0 else 0.0
        background = 1.0 if strokes < 0.5 else 0.0
        return gray * alpha + background * (1.0 - alpha)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def _border_level(gray: np.ndarray) -> float:
    """The median of the outermost ring of pixels: the background's brightness."""
    ring = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return float(np.median(ring))


def should_invert(gray: np.ndarray, invert: str = "auto") -> bool:
    """Whether to invert: MNIST digits are light on a dark background.

    ``"auto"`` inverts when the background (the border's median, or the mean for an image too
    small to have a border) is bright, i.e. dark-on-light drawings; ``"yes"``/``"no"`` force it.
    """
    if invert != "auto":
        return invert == "yes"
    level = _border_level(gray) if min(gray.shape) >= 3 else float(gray.mean())
    return level > 0.5


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if array.shape == size:
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    out = torch.nn.functional.interpolate(
        tensor, size=size, mode="bilinear", antialias=True, align_corners=False
    )
    return out[0, 0].clamp_(0.0, 1.0).numpy()


def _pad_square(array: np.ndarray, value: float) -> np.ndarray:
    h, w = array.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return np.pad(array, ((top, side - h - top), (left, side - w - left)), constant_values=value)


def fit_frame(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pad to a square with the background, then resize to ``size`` (unchanged if already that size)."""
    if gray.shape == size:
        return gray
    return _resize(_pad_square(gray, _border_level(gray)), size)


def fit_digit(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Frame a light-on-dark digit the way MNIST's were made.

    Background to 0 and the brightest stroke to 1, crop to the strokes' bounding box, scale it
    (aspect ratio kept) to fit a box of 20/28 of the frame, and place it so that its centre of
    mass is the frame's centre.
    """
    background = _border_level(gray)
    peak = float(gray.max())
    if peak - background < 1e-3:
        return fit_frame(gray, size)  # a blank image: nothing to centre
    levels = np.clip((gray - background) / (peak - background), 0.0, 1.0)
    rows, cols = np.nonzero(levels > 0.2)
    crop = levels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    box = max(1, round(min(size) * 20 / 28))
    side = max(crop.shape)
    scaled_shape = (max(1, round(crop.shape[0] * box / side)), max(1, round(crop.shape[1] * box / side)))
    digit = _resize(crop, scaled_shape)
    frame = np.zeros(size, dtype=np.float32)
    total = float(digit.sum())
    if total > 0:
        ys, xs = np.indices(digit.shape)
        cy, cx = float((ys * digit).sum()) / total, float((xs * digit).sum()) / total
    else:
        cy, cx = (digit.shape[0] - 1) / 2, (digit.shape[1] - 1) / 2
    top = min(max(round((size[0] - 1) / 2 - cy), 0), size[0] - digit.shape[0])
    left = min(max(round((size[1] - 1) / 2 - cx), 0), size[1] - digit.shape[1])
    frame[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return frame


def prepare_image(
    path: ImageSource,
    mean: float,
    std: float,
    size: tuple[int, int] = (28, 28),
    invert: str = "auto",
    fit: str = "frame",
) -> Tensor:
    """An image file as the model's input: ``(1, H, W)`` float32, light on dark, normalised.

    Args:
        path: A PNG, JPEG, ... of any size and colour mode (a file, its bytes, or an array of pixels).
        mean: Mean of the training images (the datamodule class's ``mean``).
        std: Standard deviation of the training images (the datamodule class's ``std``).
        size: ``(H, W)`` of the model's input.
        invert: ``"auto"`` (invert dark-on-light images), ``"yes"`` or ``"no"``.
        fit: ``"frame"``: pad to a square with the background and resize, keeping the whole
            picture (right for images framed like the dataset's; a 28x28 image is unchanged);
            ``"digit"``: crop to the strokes and centre them the way MNIST's digits were made (for
            photos or drawings of one digit with a wide margin).

    Raises:
        ImageError: the file cannot be read or is refused.
    """
    gray = read_grayscale(path)
    if should_invert(gray, invert):
        gray = 1.0 - gray
    framed = fit_digit(gray, size) if fit == "digit" else fit_frame(gray, size)
    tensor = torch.from_numpy(np.ascontiguousarray(framed, dtype=np.float32))
    return tensor.sub(mean).div(std).unsqueeze(0)
