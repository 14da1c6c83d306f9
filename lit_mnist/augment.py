"""Augmentation of whole batches on the training device: a random affine warp per sample.

:class:`RandomAffine` rotates, scales and translates every image of a batch by its own random amounts
with one ``affine_grid`` + ``grid_sample`` over the batch tensor, on whatever device the batch is
on: no PIL, no per-sample Python. It draws nothing itself: the in-memory loader
(:class:`~lit_mnist.loader.InMemoryBatchLoader`, ``augment=``) hands it ``uniforms``, the rows of an
epoch-long table of uniform numbers drawn from ``(seed, epoch, rank)``, one row per sample position.
So the augmented batches are a pure function of the run's seed and the epoch: a resumed run, or the
same run with another step-group size, sees exactly the same images.

Not kornia's ``RandomAffine``: it draws its own parameters from the global random state, which the
loader could not replay per sample position on resume; torchvision's ``v2.RandomAffine`` applies one
draw to a whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_mnist.ranges import check_augmentation

__all__ = ["RandomAffine"]


class RandomAffine:
    """Per-sample random rotation, scale and translation of an ``(N, C, H, W)`` batch.

    Each sample gets an angle uniform in ``[-degrees, degrees]``, a zoom uniform in
    ``[1 - scale, 1 + scale]`` and a shift uniform in ``[-translate, translate]`` of the image's width
    and height. Pixels warped in from outside the image take ``fill`` (per channel), which should be
    the normalised value of black, ``-mean / std``, so that the border matches the background.

    Args:
        degrees: Largest rotation, in degrees (>= 0).
        translate: Largest shift, as a fraction of the image size (in ``[0, 1)``).
        scale: Largest relative zoom in or out (in ``[0, 1)``).
        fill: Value of pixels from outside the image: one number, or one per channel.

    Example::

        augment = RandomAffine(degrees=10, translate=0.1, scale=0.1, fill=-0.1307 / 0.3081)
        batch = augment(images, torch.rand(len(images), augment.draws))
    """

    #: Uniform numbers used per sample: angle, zoom, shift x, shift y.
    draws = 4

    def __init__(
        self,
        degrees: float = 0.0,
        translate: float = 0.0,
        scale: float = 0.0,
        fill: float | Sequence[float] = 0.0,
    ) -> None:
        check_augmentation(degrees, translate, scale)
        self.degrees = float(degrees)
        self.translate = float(translate)
        self.scale = float(scale)
        self.fill = [float(fill)] if isinstance(fill, (int, float)) else [float(v) for v in fill]

    @property
    def active(self) -> bool:
        """Whether it changes anything (all three amounts 0: the identity, and the loader skips it)."""
        return bool(self.degrees or self.translate or self.scale)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(degrees={self.degrees}, translate={self.translate}, scale={self.scale}, "
            f"fill={self.fill})"
        )

    def __call__(self, images: Tensor, uniforms: Tensor) -> Tensor:
        """Warp ``images`` ``(N, C, H, W)`` with the amounts drawn by ``uniforms`` ``(N, draws)`` in ``[0, 1)``.

        Returns:
            A new tensor of the same shape, dtype and device.
        """
        n, channels = images.shape[0], images.shape[1]
        u = uniforms.to(device=images.device, dtype=images.dtype) * 2 - 1  # in [-1, 1)
        angle = u[:, 0] * math.radians(self.degrees)
        zoom = 1 + u[:, 1] * self.scale
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # affine_grid maps output coordinates to input ones, in [-1, 1] units: a shift of t of the
        # size is 2t there, and the inverse of "rotate by a, zoom by s" is "rotate by -a, zoom by 1/s".
        shift_x, shift_y = -2 * self.translate * u[:, 2], -2 * self.translate * u[:, 3]
        theta = torch.stack(
            [torch.stack([cos, sin, shift_x], 1), torch.stack([-sin, cos, shift_y], 1)], 1
        )  # (N, 2, 3)
        grid = F.affine_grid(theta, [n, channels, *images.shape[2:]], align_corners=False)
        fill = images.new_tensor(self.fill if len(self.fill) == channels else self.fill[:1] * channels)
        fill = fill.view(1, channels, 1, 1)
        # grid_sample pads with zeros: warp the difference from the fill, then add it back
        warped = F.grid_sample(
            images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return warped + fill
