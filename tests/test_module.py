"""The LightningModule: optimizers and schedulers from plain hyperparameters, checks, reloading."""

from pathlib import Path

import lightning as L
import pytest
import torch

from lit_mnist.errors import ConfigError
from lit_mnist.module import MNISTClassifier


def _quiet_trainer(max_epochs: int, callbacks: list[L.Callback]) -> L.Trainer:
    """A CPU Trainer with no logger, checkpoints, progress bar or summary."""
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("sgd", torch.optim.SGD),
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
        ("rmsprop", torch.optim.RMSprop),
    ],
)
def test_optimizer_from_name(name: str, cls: type) -> None:
    model = MNISTClassifier(optimizer=name, lr=0.003, weight_decay=1e-4)
    optimizer = model.configure_optimizers()
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.003
    assert group["weight_decay"] == 1e-4


def test_sgd_momentum_and_nesterov() -> None:
    optimizer = MNISTClassifier(momentum=0.8, nesterov=True).configure_optimizers()
    assert optimizer.param_groups[0]["momentum"] == 0.8
    assert optimizer.param_groups[0]["nesterov"] is True


def test_step_scheduler_is_per_epoch() -> None:
    config = MNISTClassifier(scheduler="step", step_size=3, gamma=0.5).configure_optimizers()
    scheduler = config["lr_scheduler"]
    assert isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert scheduler["interval"] == "epoch"
    assert scheduler["scheduler"].step_size == 3


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("cosine", torch.optim.lr_scheduler.CosineAnnealingLR),
        ("onecycle", torch.optim.lr_scheduler.OneCycleLR),
    ],
)
@pytest.mark.parametrize("steps", [1, 5])
def test_step_schedulers_span_the_whole_run(name: str, cls: type, steps: int, tiny_data: Path) -> None:
    from lit_mnist.mnist import MNISTDataModule

    seen = {}

    class Probe(L.Callback):
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            config = trainer.lr_scheduler_configs[0]
            seen["cls"] = type(config.scheduler)
            seen["interval"] = config.interval
            scheduler = config.scheduler
            seen["total"] = getattr(scheduler, "T_max", getattr(scheduler, "total_steps", None))

    datamodule = MNISTDataModule(str(tiny_data), batch_size=100, val_size=100, steps_per_batch=steps)
    trainer = _quiet_trainer(max_epochs=2, callbacks=[Probe()])
    trainer.fit(MNISTClassifier(scheduler=name, lr=0.05, steps_per_batch=steps), datamodule=datamodule)
    assert seen["cls"] is cls
    assert seen["interval"] == "step"
    # 500 training images / batch 100, two epochs: 10 optimizer steps, in 10 batches or 2 groups of 5
    assert seen["total"] == 2 * 5
    assert trainer.global_step == 10
    assert trainer.num_training_batches == 5 // steps


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -1}, "lr must be > 0, got -1"),
        ({"lr": 0}, "lr must be > 0, got 0"),
        ({"optimizer": "foo"}, "optimizer must be one of sgd, adam, adamw, rmsprop; got 'foo'"),
        ({"scheduler": "bar"}, "scheduler must be one of none, step, cosine, onecycle; got 'bar'"),
        ({"model": "resnet"}, "model must be one of mlp, cnn; got 'resnet'"),
        ({"momentum": -0.1}, "momentum must be >= 0"),
        ({"weight_decay": -1}, "weight_decay must be >= 0"),
        ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\)"),
        ({"optimizer": "adam", "nesterov": True}, "nesterov needs --optimizer sgd"),
        ({"betas": (0.9,)}, r"betas must be two numbers in \[0, 1\), e.g. 0.9 0.999; got \[0.9\]"),
        ({"betas": (0.9, 1.0)}, r"betas must be two numbers in \[0, 1\)"),
        (
            {"model": "cnn", "cnn_kernel_sizes": (3, 3, 3)},
            "cnn_kernel_sizes must be odd positive sizes, one for every convolution or one per convolution",
        ),
    ],
)
def test_bad_hyperparameters_name_the_parameter(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MNISTClassifier(**kwargs)


def test_hyperparameters_are_plain_values() -> None:
    model = MNISTClassifier(hidden_sizes=(32, 16), input_shape=(1, 28, 28))
    for value in model.hparams.values():
        assert isinstance(value, (int, float, str, bool, list))
    assert model.hparams.hidden_sizes == [32, 16]


def test_label_smoothing_reaches_the_loss() -> None:
    assert MNISTClassifier(label_smoothing=0.1).criterion.label_smoothing == 0.1


def test_load_from_checkpoint_weights_only(tmp_path: Path) -> None:
    model = MNISTClassifier(hidden_sizes=[32], dropout=0.1, optimizer="adamw", lr=0.002)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(model)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = MNISTClassifier.load_from_checkpoint(path, weights_only=True)
    assert loaded.hparams == model.hparams
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def _accuracy_and_loss(
    model: MNISTClassifier, images: torch.Tensor, labels: torch.Tensor
) -> tuple[float, float]:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(images)
    model.train(was_training)
    accuracy = (logits.argmax(dim=-1) == labels).float().mean().item()
    return accuracy, torch.nn.functional.cross_entropy(logits, labels).item()


def test_logged_validation_and_test_metrics_are_those_of_each_epoch(tiny_data: Path) -> None:
    """val/acc and val/loss are the current weights' accuracy and mean loss over the validation split,
    epoch by epoch (the metrics are reset between epochs); test/acc and test/loss over the test set."""
    from lit_mnist.mnist import MNISTDataModule

    datamodule = MNISTDataModule(str(tiny_data), batch_size=32, val_size=100)
    datamodule.setup("fit")
    val_images, val_labels = datamodule.split("val")
    seen: list[tuple[float, float, float, float]] = []

    class Probe(L.Callback):
        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.sanity_checking:
                return
            metrics = trainer.callback_metrics
            expected = _accuracy_and_loss(pl_module, val_images, val_labels)  # type: ignore[arg-type]
            seen.append((float(metrics["val/acc"]), float(metrics["val/loss"]), *expected))

    trainer = _quiet_trainer(max_epochs=3, callbacks=[Probe()])
    L.seed_everything(0, verbose=False)
    model = MNISTClassifier()
    trainer.fit(model, datamodule=datamodule)
    assert len(seen) == 3
    for acc, loss, expected_acc, expected_loss in seen:
        assert acc == pytest.approx(expected_acc, abs=1e-6)
        assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert len({loss for _, loss, *_ in seen}) == 3  # three epochs, three sets of weights

    tested = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    test_images, test_labels = datamodule.split("test")
    expected_acc, expected_loss = _accuracy_and_loss(model, test_images, test_labels)
    assert tested["test/acc"] == pytest.approx(expected_acc, abs=1e-6)
    assert tested["test/loss"] == pytest.approx(expected_loss, rel=1e-5)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_betas_reach_the_optimizer(name: str) -> None:
    optimizer = MNISTClassifier(optimizer=name, betas=(0.7, 0.9)).configure_optimizers()
    assert optimizer.param_groups[0]["betas"] == (0.7, 0.9)
    assert MNISTClassifier(optimizer=name).configure_optimizers().param_groups[0]["betas"] == (0.9, 0.999)


@pytest.mark.parametrize("cycle", [True, False])
def test_onecycle_cycles_beta1_only_when_asked(cycle: bool, tiny_data: Path) -> None:
    """--no-cycle-momentum keeps Adam's beta1 as given through the run; PyTorch's default moves it (0.85-0.95)."""
    from lit_mnist.mnist import MNISTDataModule

    seen: list[float] = []

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
            seen.append(trainer.optimizers[0].param_groups[0]["betas"][0])

    model = MNISTClassifier(
        optimizer="adam", lr=0.01, betas=(0.7, 0.9), scheduler="onecycle", cycle_momentum=cycle
    )
    datamodule = MNISTDataModule(str(tiny_data), batch_size=50, val_size=100)
    _quiet_trainer(max_epochs=1, callbacks=[Probe()]).fit(model, datamodule=datamodule)
    assert len(seen) == 10  # 500 training images, batch 50
    if cycle:
        assert min(seen) >= 0.85 and max(seen) <= 0.95 and len(set(seen)) > 1
    else:
        assert set(seen) == {0.7}


def test_cnn_weights_are_channels_last_and_compute_the_same() -> None:
    """channels_last changes the layout of the convolutions' weights only: same state_dict, same outputs."""
    torch.manual_seed(0)
    fast = MNISTClassifier(model="cnn", cnn_channels=(8, 16), cnn_hidden_size=32)
    plain = MNISTClassifier(model="cnn", cnn_channels=(8, 16), cnn_hidden_size=32, channels_last=False)
    plain.load_state_dict(fast.state_dict())
    conv = fast.net.features[3].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert plain.net.features[3].weight.is_contiguous()
    x = torch.randn(8, 1, 28, 28)
    assert torch.allclose(fast(x), plain(x), atol=1e-5)
    # .to() keeps the layout (a dtype change, as for bf16-true or 64-true); the MLP is left as it is
    assert fast.to(torch.float64).net.features[3].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.is_contiguous() for p in MNISTClassifier(model="mlp").parameters())


def test_a_subclass_network_keeps_its_own_layout() -> None:
    """Only the built-in CNN is made channels-last: a build_network override may flatten with .view()."""

    class Own(MNISTClassifier):
        def build_network(self) -> torch.nn.Module:
            return torch.nn.Sequential(
                torch.nn.Conv2d(1, 4, 3),
                torch.nn.Conv2d(4, 8, 3),
                torch.nn.Flatten(),
                torch.nn.Linear(8 * 24 * 24, 10),
            )

    weight = Own(model="cnn").net[1].weight  # 4 input channels: the two layouts differ (with 1 they coincide)
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)


def test_a_checkpoint_from_before_the_cnn_flags_loads_and_resumes(
    tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CNN checkpoint whose hyperparameters lack cnn_*, channels_last, betas and cycle_momentum (written
    before they existed) loads with the defaults, which are that CNN, and resumes."""
    from lit_mnist.cli.train import main as train_main
    from tests.conftest import shrunk_args

    args = [*shrunk_args(tiny_data, tmp_path / "logs"), "--model", "cnn", "--optimizer", "adam"]
    assert train_main([*args, "--max-epochs", "1"]) == 0
    last = next((tmp_path / "logs").glob("version_*")) / "checkpoints" / "last.ckpt"
    raw = torch.load(last, weights_only=True)
    for key in ("cnn_channels", "cnn_kernel_sizes", "cnn_padding", "cnn_hidden_size"):
        del raw["hyper_parameters"][key]
    for key in ("channels_last", "betas", "cycle_momentum"):
        del raw["hyper_parameters"][key]
    torch.save(raw, last)
    model = MNISTClassifier.load_from_checkpoint(last, weights_only=True)
    assert model.hparams["cnn_channels"] == [32, 64] and model.hparams["betas"] == [0.9, 0.999]
    assert train_main([*args, "--max-epochs", "2", "--ckpt-path", "last"]) == 0
    assert "Test accuracy:" in capsys.readouterr().out
    # one kernel size is every block's: `3 3` is the same network as the saved `3`, and resumes
    assert (
        train_main([*args, "--max-epochs", "3", "--ckpt-path", "last", "--cnn-kernel-sizes", "3", "3"]) == 0
    )
