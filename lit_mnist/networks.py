"""Plain ``nn.Module`` networks. They know nothing of Lightning, files or flags."""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

from torch import Tensor, nn

from lit_mnist.errors import ConfigError


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
    """A small convolutional classifier: two conv blocks, then a two-layer head.

    ``conv(32) -> ReLU -> maxpool -> conv(64) -> ReLU -> maxpool -> Linear(128) -> ReLU -> Linear``.

    Args:
        input_shape: Shape of one input image, ``(channels, height, width)``.
        num_classes: Number of outputs (logits; 1 for a regression).
        dropout: Dropout probability before the last layer.
        channels: Output channels of the two convolutions.
        hidden_size: Width of the hidden fully connected layer.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        dropout: float = 0.0,
        channels: Sequence[int] = (32, 64),
        hidden_size: int = 128,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {dropout}")
        c, h, w = input_shape
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * (h // 4) * (w // 4), hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits for a batch of images ``(N, C, H, W)``."""
        return self.head(self.features(x))
