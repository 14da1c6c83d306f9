"""The figures the monitoring callbacks log: image grids, confusion matrices, training curves.

Each function returns an RGB ``uint8`` array ``(H, W, 3)``, which :func:`add_png` writes to TensorBoard
and :func:`save_png` to a PNG file. matplotlib is imported inside the functions that draw, so importing
this module (or :mod:`lit_mnist.callbacks`) costs nothing until a figure is drawn.

Figures are drawn with matplotlib's Agg canvas directly, without ``pyplot``, so no global backend is
switched and no window can open. matplotlib lays out every text label on its own, which is slow
for many small labels, so the captions and cell counts are written with PIL in matplotlib's own
font, and the confusion matrix's frame is drawn by matplotlib once and reused.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "CONFUSION_MATRIX_IN",
    "CURVES_IN",
    "DPI",
    "GRID_COLUMNS",
    "GRID_SCALE",
    "GRID_TITLE_PX",
    "add_png",
    "class_labels",
    "confusion_matrix_figure",
    "curves_figure",
    "display_images",
    "grid_figure",
    "grid_size_px",
    "save_png",
]

#: Figure geometry (inches at DPI): image sizes in TensorBoard and on disk follow from these.
DPI = 100
GRID_COLUMNS = 8
GRID_SCALE = 3  # screen pixels per image pixel
GRID_TITLE_PX = 36
CONFUSION_MATRIX_IN = (6.4, 5.6)
CURVES_IN = (10.0, 4.0)


def _grid_margins(h: int, w: int) -> tuple[int, int]:
    """Padding beside each image and the caption's height above it, in image pixels."""
    return max(w // 14, 1), max(h * 5 // 14, 8)


def grid_size_px(num_images: int, image_hw: tuple[int, int] = (28, 28)) -> tuple[int, int]:
    """``(width, height)`` in pixels of an image grid figure with ``num_images`` cells of ``image_hw`` images."""
    cols = min(GRID_COLUMNS, max(num_images, 1))
    rows = max(math.ceil(num_images / cols), 1)
    h, w = image_hw
    pad, caption = _grid_margins(h, w)
    return cols * (w + 2 * pad) * GRID_SCALE, rows * (h + caption + pad) * GRID_SCALE + GRID_TITLE_PX


def display_images(
    images: Tensor, mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None
) -> np.ndarray:
    """Normalised images ``(N, C, H, W)`` back in ``[0, 1]``, as an array ``(N, H, W)`` or ``(N, H, W, C)``.

    With ``mean`` and ``std`` (numbers or one per channel) the normalisation is undone; without, the
    batch's range is scaled to ``[0, 1]``.
    """
    x = images.detach().float().cpu()
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        x = x * torch.as_tensor(std, dtype=x.dtype).reshape(shape) + torch.as_tensor(
            mean, dtype=x.dtype
        ).reshape(shape)
    else:
        lo, hi = x.amin(), x.amax()
        x = (x - lo) / (hi - lo).clamp_min(1e-12)
    x = x.clamp(0, 1)
    return x[:, 0].numpy() if x.shape[1] == 1 else x.permute(0, 2, 3, 1).numpy()


def _figure(size_in: tuple[float, float]) -> tuple[Figure, Any]:
    """A matplotlib figure on an Agg canvas (no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size_in, dpi=DPI)
    return fig, FigureCanvasAgg(fig)


def _render(fig: Figure, canvas: Any) -> np.ndarray:
    """The figure as an RGB uint8 array ``(H, W, 3)``."""
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


@functools.cache
def _font(size_px: int, bold: bool = False) -> Any:
    """matplotlib's own DejaVu Sans as a PIL font (PIL's default font if it cannot be found)."""
    from matplotlib import font_manager
    from PIL import ImageFont

    try:
        prop = font_manager.FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal")
        return ImageFont.truetype(font_manager.findfont(prop, fallback_to_default=True), size_px)
    except OSError:
        return ImageFont.load_default()


#: matplotlib's "tab:" colours, for PIL
_GREEN, _RED, _GRAY = (44, 160, 44), (214, 39, 40), (127, 127, 127)


def class_labels(class_names: Sequence[str] | None, n: int) -> list[str] | None:
    """How a figure names ``n`` classes: ``None`` (by index alone) when the names say no more than the index
    (``"3"``, MNIST's ``"3 - three"``), else ``"3 cat"`` for each: the index and, beside it, the name, escaped
    (a class folder's name may hold control characters, :func:`lit_mnist.runtime.printable`)."""
    from lit_mnist.runtime import printable

    if not class_names or len(class_names) != n:
        return None
    names = [str(name) for name in class_names]
    if all(name == str(i) or name.startswith(f"{i} ") for i, name in enumerate(names)):
        return None
    return [f"{i} {printable(name)}" for i, name in enumerate(names)]


def _fitted(text: str, font: Any, width: float) -> str:
    """``text``, cut with an ellipsis to at most ``width`` pixels in ``font``."""
    if font.getlength(text) <= width:
        return text
    while len(text) > 1 and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def grid_figure(
    images: np.ndarray,
    preds: Sequence[int],
    targets: Sequence[int],
    title: str,
    cells: int | None = None,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """A grid of images, each captioned ``pred P / true T`` (green when right, red and bold when wrong).

    With ``class_names`` that say more than the index (:func:`class_labels`), each caption is two lines,
    ``pred 2 cat`` over ``true 1 dog``, a name cut to the cell's width.

    ``images`` are ``(N, H, W)`` or ``(N, H, W, 3)`` in ``[0, 1]``; the result is an RGB uint8 array
    of :func:`grid_size_px`. ``cells`` fixes the grid's size (empty cells stay blank), so the image
    keeps its size from epoch to epoch when fewer images are shown. The images are pasted into one
    array, enlarged ``GRID_SCALE`` times, and the captions drawn with PIL in matplotlib's font, which
    is many times faster than matplotlib's text layout for dozens of short labels.
    """
    from PIL import Image, ImageDraw

    cells = max(cells or len(images), 1)
    cols = min(GRID_COLUMNS, cells)
    rows = math.ceil(cells / cols)
    h, w = images.shape[1:3] if len(images) else (28, 28)
    pad, caption = _grid_margins(h, w)
    cell_w, cell_h = w + 2 * pad, h + caption + pad
    mosaic = np.ones((rows * cell_h, cols * cell_w, 3), dtype=np.float32)
    for i, image in enumerate(images[:cells]):
        top, left = (i // cols) * cell_h + caption, (i % cols) * cell_w + pad
        mosaic[top : top + h, left : left + w] = image[..., None] if image.ndim == 2 else image[..., :3]
    pixels = Image.fromarray((mosaic * 255).round().astype(np.uint8))
    scaled = pixels.resize((pixels.width * GRID_SCALE, pixels.height * GRID_SCALE), Image.Resampling.NEAREST)
    width, height = grid_size_px(cells, (h, w))
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(scaled, (0, GRID_TITLE_PX))
    draw = ImageDraw.Draw(canvas)
    draw.text((width / 2, GRID_TITLE_PX / 2), title, fill="black", font=_font(15), anchor="mm")
    labels = class_labels(class_names, len(class_names or ()))
    for i in range(min(len(images), cells)):
        right = int(preds[i]) == int(targets[i])
        x = ((i % cols) + 0.5) * cell_w * GRID_SCALE
        top = GRID_TITLE_PX + (i // cols) * cell_h * GRID_SCALE
        color, font = _GREEN if right else _RED, _font(10, bold=not right)
        if labels is None:
            text = f"pred {int(preds[i])} / true {int(targets[i])}"
            draw.text((x, top + caption * 0.55 * GRID_SCALE), text, fill=color, font=font, anchor="mm")
            continue
        for line, (word, k) in enumerate((("pred", int(preds[i])), ("true", int(targets[i])))):
            name = labels[k] if k < len(labels) else str(k)
            text = _fitted(f"{word} {name}", font, cell_w * GRID_SCALE - 4)
            y = top + caption * (0.3 + 0.42 * line) * GRID_SCALE
            draw.text((x, y), text, fill=color, font=font, anchor="mm")
    if len(images) == 0:
        draw.text((width / 2, (height + GRID_TITLE_PX) / 2), "none", fill=_GRAY, font=_font(18), anchor="mm")
    return np.asarray(canvas)


#: the confusion matrix's colours: the fraction of the true class on a power scale
_CM_CMAP = "Blues"


def _cm_norm() -> Any:
    """So that a 2% confusion shows: 0.02 of the class is a fifth of the colour scale."""
    from matplotlib.colors import PowerNorm

    return PowerNorm(gamma=0.4, vmin=0.0, vmax=1.0)


#: Longest class label (index and name) on a confusion matrix's axes; a longer one is cut with an ellipsis.
_CM_LABEL_CHARS = 16


@functools.cache
def _confusion_frame(
    n: int, labels: tuple[str, ...] | None = None
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The constant part of a confusion matrix figure, drawn once per class count (and names) by matplotlib.

    Returns the RGB image (axes, ticks, labels, colour bar) and the matrix area's pixel box
    ``(left, top, right, bottom)``; the cells, counts and title are painted into a copy each time.
    ``labels``: each class's tick label (:func:`class_labels`); ``None``: the indices.
    """
    fig, canvas = _figure(CONFUSION_MATRIX_IN)
    cut = [t if len(t) <= _CM_LABEL_CHARS else t[: _CM_LABEL_CHARS - 1] + "…" for t in labels or ()]
    longest = max(map(len, cut), default=0)  # room for the names beside the axes (a character is ~0.06 in)
    fig.subplots_adjust(
        left=min(0.1 + 0.009 * longest, 0.3), right=0.98, bottom=min(0.09 + 0.0095 * longest, 0.3), top=0.93
    )
    ax = fig.add_subplot()
    shown = ax.imshow(np.zeros((n, n)), cmap=_CM_CMAP, norm=_cm_norm())
    fig.colorbar(shown, ax=ax, label="fraction of the true class")
    if cut:  # parse_math off: a "$" in a class name is a dollar sign
        ax.set_xticks(range(n), cut, rotation=45, ha="right", rotation_mode="anchor", parse_math=False)
        ax.set_yticks(range(n), cut, parse_math=False)
    else:
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    image = _render(fig, canvas)
    box = ax.get_window_extent()
    height = image.shape[0]
    return image, (round(box.x0), round(height - box.y1), round(box.x1), round(height - box.y0))


def confusion_matrix_figure(
    matrix: np.ndarray, title: str, class_names: Sequence[str] | None = None
) -> np.ndarray:
    """The confusion matrix (rows: true class, columns: predicted class) with counts in the cells.

    The axes name each class by its index, with its name beside it when ``class_names`` say more than the
    index (:func:`class_labels`; up to 20 classes, where the ticks have room).

    The colour is the fraction of the true class (a power scale, so that a 2% confusion shows).
    matplotlib draws the frame (axes, ticks, colour bar) once per class count; each call paints the
    cells with the same colour map into a copy and writes the counts and title with PIL in
    matplotlib's font (see :func:`grid_figure`).
    """
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    matrix = np.asarray(matrix, dtype=np.int64)
    n = matrix.shape[0]
    fraction = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    total = int(matrix.sum())
    accuracy = np.trace(matrix) / total if total else float("nan")
    labels = class_labels(class_names, n) if n <= 20 else None
    frame, (left, top, right, bottom) = _confusion_frame(n, tuple(labels) if labels else None)
    image = frame.copy()
    colors = (colormaps[_CM_CMAP](_cm_norm()(fraction))[..., :3] * 255).round().astype(np.uint8)
    xs = np.linspace(left, right, n + 1).round().astype(int)
    ys = np.linspace(top, bottom, n + 1).round().astype(int)
    for i in range(n):  # inside the spines (1 px) so the frame stays drawn
        for j in range(n):
            image[
                max(ys[i], top + 1) : min(ys[i + 1], bottom - 1),
                max(xs[j], left + 1) : min(xs[j + 1], right - 1),
            ] = colors[i, j]
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    draw.text(
        ((left + right) / 2, top - 12),
        f"{title}: {total} images, accuracy {accuracy:.2%}",
        fill="black",
        font=_font(14),
        anchor="mb",
    )
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    color = "white" if fraction[i, j] > 0.5 else ("black" if i == j else _RED)
                    center = ((xs[j] + xs[j + 1]) / 2, (ys[i] + ys[i + 1]) / 2)
                    draw.text(center, str(matrix[i, j]), fill=color, font=_font(10), anchor="mm")
    return np.asarray(canvas)


def curves_figure(history: Mapping[int, Mapping[str, float]]) -> np.ndarray:
    """Loss and accuracy per epoch (counted from 0, as Lightning does), train and validation, side by side."""
    from matplotlib.ticker import MaxNLocator

    fig, canvas = _figure(CURVES_IN)
    epochs = sorted(history)
    for index, (kind, label) in enumerate((("loss", "loss"), ("acc", "accuracy"))):
        ax = fig.add_subplot(1, 2, index + 1)
        for split, style in (("train", "o-"), ("val", "s-")):
            points = [(e, history[e][f"{split}/{kind}"]) for e in epochs if f"{split}/{kind}" in history[e]]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, label=f"{split}", markersize=4)
        ax.set_xlabel("epoch (from 0, as Lightning counts)")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        if epochs:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.lines:
            ax.legend()
    best = [history[e]["val/acc"] for e in epochs if "val/acc" in history[e]]
    if best:
        fig.suptitle(f"best val/acc {max(best):.2%}", fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.86, wspace=0.22)
    return _render(fig, canvas)


def add_png(experiment: Any, tag: str, image: np.ndarray, step: int) -> None:
    """Write an RGB uint8 image ``(H, W, 3)`` to a TensorBoard ``SummaryWriter`` as ``tag`` at ``step``."""
    experiment.add_image(tag, image, step, dataformats="HWC")


def save_png(image: np.ndarray, path: Path) -> None:
    """Write an RGB uint8 image ``(H, W, 3)`` as a PNG file, creating its folder."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
