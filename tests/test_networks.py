"""The plain networks: shapes, the classic layout, configurable widths and dropout."""

import pytest
import torch
from torch import nn

from lit_mnist.errors import ConfigError
from lit_mnist.networks import CNN, MLP


def test_default_mlp_is_the_classic_net() -> None:
    net = MLP()
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 128), (128, 64), (64, 10)]
    assert not any(isinstance(m, nn.Dropout) for m in net.modules())
    # ReLU between layers, none on the logits
    assert isinstance(net.layers[-1], nn.Linear)
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 2
    assert sum(p.numel() for p in net.parameters()) == 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10


def test_mlp_logits_can_be_negative() -> None:
    torch.manual_seed(0)
    logits = MLP()(torch.randn(32, 1, 28, 28))
    assert logits.shape == (32, 10)
    assert (logits < 0).any()


def test_mlp_hidden_sizes_and_dropout_are_configurable() -> None:
    net = MLP(hidden_sizes=[256, 128, 32], dropout=0.2, num_classes=5)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [256, 128, 32, 5]
    assert sum(isinstance(m, nn.Dropout) for m in net.modules()) == 3
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_sizes": []}, "hidden_sizes must be one or more positive integers"),
        ({"hidden_sizes": [128, 0]}, "hidden_sizes must be one or more positive integers"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"num_classes": 0}, "num_classes must be >= 1, got 0"),
    ],
)
def test_mlp_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MLP(**kwargs)


def test_cnn_shapes() -> None:
    assert CNN()(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert CNN(input_shape=(3, 32, 32), num_classes=7)(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
