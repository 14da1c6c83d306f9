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


def test_cnn_default_layout_and_state_dict_keys_are_unchanged() -> None:
    """Checkpoints of the CNN from before the blocks were configurable load into the default CNN."""
    net = CNN()
    assert [k for k in net.state_dict()] == [
        "features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias",
        "head.1.weight", "head.1.bias", "head.4.weight", "head.4.bias",
    ]  # fmt: skip
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 32, (3, 3), (1, 1)),
        (32, 64, (3, 3), (1, 1)),
    ]
    assert net.head[1].in_features == 64 * 7 * 7 and net.head[1].out_features == 128


def test_cnn_pooling_before_the_relu_gives_the_values_of_relu_then_pooling() -> None:
    torch.manual_seed(0)
    net = CNN(channels=(8, 16), kernel_sizes=(5, 3), padding="valid", hidden_size=32)
    reference = nn.Sequential(  # the textbook order, on the same weights
        net.features[0], nn.ReLU(), nn.MaxPool2d(2), net.features[3], nn.ReLU(), nn.MaxPool2d(2), net.head
    )
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(net(x), reference(x))


def test_cnn_blocks_kernels_padding_and_head_are_configurable() -> None:
    # the cnn-fast recipe's CNN: 28 -5x5-> 24 -pool-> 12 -3x3-> 10 -pool-> 5: 32 * 5 * 5 = 800 features
    fast = CNN(channels=(16, 32), kernel_sizes=(5, 3), padding="valid", hidden_size=128)
    assert fast.head[1].in_features == 800 and fast.head[1].out_features == 128
    assert fast(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # three "same" blocks: 28 -> 14 -> 7 -> 3
    deep = CNN(channels=(8, 16, 32), hidden_size=64, num_classes=5)  # one kernel size (3) for all three
    assert deep.head[1].in_features == 32 * 3 * 3
    assert deep(torch.zeros(2, 1, 28, 28)).shape == (2, 5)
    assert sum(isinstance(m, nn.Conv2d) for m in deep.modules()) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": []}, "cnn_channels must be one or more positive integers"),
        ({"channels": (32, 0)}, "cnn_channels must be one or more positive integers"),
        (
            {"kernel_sizes": (5, 3, 3)},
            r"cnn_kernel_sizes must be odd positive sizes, one for every convolution or one per convolution "
            r"\(2 for channels \[32, 64\]\), e.g. 5 3; got \[5, 3, 3\]",
        ),
        ({"kernel_sizes": (3, 4)}, "cnn_kernel_sizes must be odd positive sizes"),
        ({"kernel_sizes": (4,)}, "cnn_kernel_sizes must be odd positive sizes"),
        ({"padding": "full"}, "cnn_padding must be same or valid, got 'full'"),
        ({"hidden_size": 0}, "cnn_hidden_size must be >= 1, got 0"),
        (
            {"channels": (8, 8, 8), "kernel_sizes": (5, 5, 5), "padding": "valid"},
            "cnn_kernel_sizes leave no pixels of a 28x28 image after 3 block.* or --cnn-padding same",
        ),
        (
            {"channels": (4, 4, 4, 4, 4, 4)},
            r"cnn_channels leave no pixels of a 28x28 image after 5 block\(s\) \(each halves it\): use fewer blocks$",
        ),
    ],
)
def test_cnn_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CNN(**kwargs)
