"""Plain ``nn.Module`` networks. They know nothing of Lightning, files or flags."""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

from torch import Tensor, nn

from lit_mnist.errors import ConfigError

__all__ = [
    "CNN",
    "MLP",
]


class MLP(nn.Module):
    """A fully connected classifier: flatten, then Linear+ReLU blocks, then a Linear to the logits.

    The defaults are the classic PyTorch MNIST ``Net`` exactly: 784 -> 128 -> 64 -> 10 with ReLU
    between the layers, no dropout and no activation on the logits.

    Args:
        input_shape: Shape of one input image, ``(channels, height, width)``.
        hidden_sizes: Width of each hidden layer, in order.
        num_classes: Number of outputs (logits; 1 for a regression).
        dropout: Dropout probability after each hidden ReLU (0 disables it and adds no layer).
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        hidden_sizes: Sequence[int] = (128, 64),
        num_classes: int = 10,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not hidden_sizes or any(int(h) < 1 for h in hidden_sizes):
            raise ConfigError(
                "hidden_sizes",
                f"must be one or more positive integers, e.g. 128 64; got {list(hidden_sizes)}",
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {dropout}")
        if num_classes < 1:  # 1: a regression head
            raise ConfigError("num_classes", f"must be >= 1, got {num_classes}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = prod(input_shape)
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, int(hidden)), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(hidden)
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits (no softmax, no ReLU) for a batch of images ``(N, C, H, W)``."""
        return self.layers(x)


class CNN(nn.Module):
    """A small convolutional classifier: conv blocks, then a two-layer head.

    Each block is ``conv -> maxpool(2) -> ReLU`` (max-pooling before the ReLU gives the same values as
    after it, since ReLU is monotonic, and the ReLU then runs on a quarter of the activations); then
    ``Linear(hidden_size) -> ReLU -> Dropout -> Linear``. The defaults are conv(32, 3x3) -> conv(64,
    3x3), "same" padding, a 128-wide head.

    Args:
        input_shape: Shape of one input image, ``(channels, height, width)``.
        num_classes: Number of outputs (logits; 1 for a regression).
        dropout: Dropout probability before the last layer.
        channels: Output channels of each convolution, one per block.
        hidden_size: Width of the hidden fully connected layer.
        kernel_sizes: Kernel size of each convolution (square, odd), one per block; one size: every block's.
        padding: ``"same"`` (each block halves the image) or ``"valid"`` (no padding: a ``k x k``
            convolution trims ``k - 1`` pixels before the pooling; less computation).
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        dropout: float = 0.0,
        channels: Sequence[int] = (32, 64),
        hidden_size: int = 128,
        kernel_sizes: Sequence[int] = (3,),
        padding: str = "same",
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {dropout}")
        if not channels or any(int(c) < 1 for c in channels):
            raise ConfigError(
                "cnn_channels", f"must be one or more positive integers, e.g. 32 64; got {list(channels)}"
            )
        if len(kernel_sizes) == 1:
            kernel_sizes = list(kernel_sizes) * len(channels)
        if len(kernel_sizes) != len(channels) or any(int(k) < 1 or int(k) % 2 == 0 for k in kernel_sizes):
            raise ConfigError(
                "cnn_kernel_sizes",
                f"must be odd positive sizes, one for every convolution or one per convolution ({len(channels)} "
                f"for channels {list(channels)}), e.g. 5 3; got {list(kernel_sizes)}",
            )
        if padding not in ("same", "valid"):
            raise ConfigError("cnn_padding", f"must be same or valid, got {padding!r}")
        if hidden_size < 1:
            raise ConfigError("cnn_hidden_size", f"must be >= 1, got {hidden_size}")
        width, h, w = input_shape
        layers: list[nn.Module] = []
        for out, k in zip(channels, kernel_sizes, strict=True):
            trim = 0 if padding == "same" else int(k) - 1
            h, w = (h - trim) // 2, (w - trim) // 2
            if h < 1 or w < 1:
                blocks = len(layers) // 3 + 1
                raise ConfigError(
                    "cnn_kernel_sizes" if padding == "valid" else "cnn_channels",
                    f"leave no pixels of a {input_shape[1]}x{input_shape[2]} image after {blocks} block(s) "
                    + (
                        "with valid padding: use fewer or smaller convolutions, or --cnn-padding same"
                        if padding == "valid"
                        else "(each halves it): use fewer blocks"
                    ),
                )
            layers += [
                nn.Conv2d(width, int(out), int(k), padding=int(k) // 2 if padding == "same" else 0),
                nn.MaxPool2d(2),
                nn.ReLU(),
            ]
            width = int(out)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(width * h * w, hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits for a batch of images ``(N, C, H, W)``."""
        return self.head(self.features(x))
