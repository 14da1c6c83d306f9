"""Step groups: several optimizer steps per training batch give the same run as one step per batch.

The tiny dataset has 500 training images; at batch 25 that is 20 steps per epoch, and with
``log_every_n_steps=10`` the default ``steps_per_batch=10`` stays 10: 2 Lightning batches per epoch.
"""

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing import event_accumulator as ea
from torch import Tensor

from lit_mnist import MNISTClassifier, MNISTDataModule
from lit_mnist.cli import train_main
from lit_mnist.stopping import GracefulInterrupt

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "scripts" / "train.py")


def _fit(
    data: Path,
    log_dir: Path | None,
    steps_per_batch: int,
    hparams: dict[str, Any] | None = None,
    cls: type[MNISTClassifier] = MNISTClassifier,
    datamodule_kwargs: dict[str, Any] | None = None,
    **trainer_kwargs: Any,
) -> tuple[MNISTClassifier, MNISTDataModule, L.Trainer]:
    L.seed_everything(3, verbose=False)
    model = cls(**(hparams or {}))
    datamodule = MNISTDataModule(
        str(data), batch_size=25, val_size=100, steps_per_batch=steps_per_batch, **(datamodule_kwargs or {})
    )
    kwargs: dict[str, Any] = dict(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        log_every_n_steps=10,
        enable_checkpointing=False,
        enable_progress_bar=False,
        logger=False,
    )  # the model summary stays on: it passes the example input through the batch hooks
    if log_dir is not None:
        kwargs["logger"] = TensorBoardLogger(str(log_dir), name="", version=0, default_hp_metric=False)
        kwargs["callbacks"] = [LearningRateMonitor()]
    kwargs.update(trainer_kwargs)
    trainer = L.Trainer(**kwargs)
    trainer.fit(model, datamodule=datamodule)
    return model, datamodule, trainer


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = ea.EventAccumulator(str(log_dir / "version_0"), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize(
    "hparams",
    [
        {"scheduler": "onecycle", "lr": 0.05},  # stepped after every optimizer step
        {"scheduler": "step", "step_size": 1, "gamma": 0.5, "optimizer": "adam", "lr": 0.003},  # every epoch
    ],
)
def test_groups_train_and_log_exactly_like_one_step_per_batch(
    hparams: dict[str, Any], tiny_data: Path, tmp_path: Path
) -> None:
    one, _, t1 = _fit(tiny_data, tmp_path / "one", 1, hparams)
    grouped, dm, tg = _fit(tiny_data, tmp_path / "grouped", 10, hparams)
    assert t1.lightning_module.automatic_optimization
    assert not tg.lightning_module.automatic_optimization
    assert dm.train_steps_per_batch == 10 and tg.num_training_batches == 2 and t1.num_training_batches == 20
    assert t1.global_step == tg.global_step == 40
    _assert_same_parameters(one, grouped)
    assert t1.optimizers[0].param_groups[0]["lr"] == tg.optimizers[0].param_groups[0]["lr"]
    clone = copy.deepcopy(grouped)  # e.g. a weight-averaging callback: no trainer comes along
    assert clone._trainer is None and clone._groups_for is None and clone.automatic_optimization

    s1, sg = _scalars(tmp_path / "one"), _scalars(tmp_path / "grouped")
    assert s1.keys() == sg.keys()
    assert [step for step, _ in s1["train/loss"]] == [9, 19, 29, 39]
    for tag in s1:
        assert [step for step, _ in s1[tag]] == [step for step, _ in sg[tag]], tag  # same x-axis
        if tag != "lr-SGD":  # per-step learning rates: the group's first step, not its last
            assert s1[tag] == sg[tag], tag


@pytest.mark.parametrize(
    ("datamodule_kwargs", "trainer_kwargs"),
    [
        ({"loader": "torchvision"}, {}),
        ({}, {"gradient_clip_val": 1.0}),
        ({}, {"accumulate_grad_batches": 2}),
        ({}, {"limit_train_batches": 10}),
        ({}, {"val_check_interval": 0.5}),
    ],
)
def test_one_step_per_batch_where_lightning_counts_batches(
    datamodule_kwargs: dict[str, Any], trainer_kwargs: dict[str, Any], tiny_data: Path
) -> None:
    model, datamodule, _ = _fit(tiny_data, None, 10, datamodule_kwargs=datamodule_kwargs, **trainer_kwargs)
    assert model.automatic_optimization
    assert datamodule.train_steps_per_batch == 1


def test_a_module_with_its_own_training_step_gets_one_step_per_batch(tiny_data: Path) -> None:
    class Custom(MNISTClassifier):
        def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
            assert batch[0].shape[0] == 25  # one batch of batch_size, as Lightning's docs promise
            return super().training_step(batch, batch_idx)

    model, datamodule, trainer = _fit(tiny_data, None, 10, cls=Custom)
    assert model.automatic_optimization and datamodule.train_steps_per_batch == 1
    assert trainer.global_step == 40


class _WarmUp(MNISTClassifier):
    """Lightning's documented learning-rate warm-up: an ``optimizer_step`` override."""

    steps = 0

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        type(self).steps += 1
        for group in optimizer.param_groups:
            group["lr"] = 0.01 * min(1.0, (self.trainer.global_step + 1) / 10)
        optimizer.step(closure=optimizer_closure)


class _ZeroGradWatcher(L.Callback):
    def __init__(self) -> None:
        self.calls = 0

    def on_before_zero_grad(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.calls += 1


def test_hooks_of_automatic_optimization_keep_one_step_per_batch(tiny_data: Path) -> None:
    """Manual optimization would skip them: a warm-up in ``optimizer_step`` must still run every step."""
    _WarmUp.steps = 0
    model, datamodule, trainer = _fit(tiny_data, None, 10, cls=_WarmUp)
    assert model.automatic_optimization and datamodule.train_steps_per_batch == 1
    assert _WarmUp.steps == trainer.global_step == 40
    watcher = _ZeroGradWatcher()
    model, datamodule, trainer = _fit(tiny_data, None, 10, callbacks=[watcher])
    assert model.automatic_optimization and datamodule.train_steps_per_batch == 1
    assert watcher.calls == 40


class _GradientNorms(L.Callback):
    """Reads the gradients at every optimizer step, as a gradient-norm monitor does."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {"on_before_backward": 0, "on_after_backward": 0}
        self.norms: list[float] = []

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        self.calls["on_before_backward"] += 1

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.calls["on_after_backward"] += 1

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        grads = [p.grad for p in pl_module.parameters()]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


def test_step_hooks_run_at_every_step_of_a_group(tiny_data: Path) -> None:
    one_hooks, grouped_hooks = _GradientNorms(), _GradientNorms()
    one, _, _ = _fit(tiny_data, None, 1, callbacks=[one_hooks])
    grouped, dm, trainer = _fit(tiny_data, None, 10, callbacks=[grouped_hooks])
    assert dm.train_steps_per_batch == 10 and trainer.global_step == 40
    assert grouped_hooks.calls == one_hooks.calls == {"on_before_backward": 40, "on_after_backward": 40}
    assert grouped_hooks.norms == one_hooks.norms and len(one_hooks.norms) == 40
    _assert_same_parameters(one, grouped)


def test_groups_skip_lightnings_per_step_calls_when_no_hook_listens(
    tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing in the step hooks, a step is backward, the optimizer step and the step count."""
    calls = {"backward": 0}
    backward = L.pytorch.strategies.SingleDeviceStrategy.backward

    def counting_backward(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["backward"] += 1
        return backward(self, *args, **kwargs)

    monkeypatch.setattr(L.pytorch.strategies.SingleDeviceStrategy, "backward", counting_backward)
    one, _, _ = _fit(tiny_data, None, 1)
    assert calls["backward"] == 40  # Lightning's automatic optimization, one per step
    grouped, _, tg = _fit(tiny_data, None, 10)
    assert calls["backward"] == 40 and tg.global_step == 40  # no call more: the groups' lean path
    _assert_same_parameters(one, grouped)


@pytest.mark.parametrize(
    ("trainer_kwargs", "groups", "steps"),
    [
        ({"log_every_n_steps": 4}, 2, 40),  # gcd(10, 20 steps per epoch, 4)
        ({"max_steps": 15}, 5, 15),  # stops exactly at max_steps
    ],
)
def test_groups_divide_every_step_count(
    trainer_kwargs: dict[str, Any], groups: int, steps: int, tiny_data: Path
) -> None:
    one, _, t1 = _fit(tiny_data, None, 1, **trainer_kwargs)
    grouped, dm, tg = _fit(tiny_data, None, 10, **trainer_kwargs)
    assert dm.train_steps_per_batch == groups
    assert t1.global_step == tg.global_step == steps
    _assert_same_parameters(one, grouped)


def test_step_groups_flag_and_mid_epoch_resume(
    run_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's default groups of 10 steps, stopped by SIGTERM after step 30 (epoch 1): the resumed run
    ends with the weights of an uninterrupted run with one step per batch."""
    args = [*run_args, "--batch-size", "25", "--log-every-n-steps", "10", "--max-epochs", "3"]
    assert train_main([*args, "--steps-per-batch", "1", "--log-dir", str(tmp_path / "straight")]) == 0

    def terminate_after_step_30(self: GracefulInterrupt, trainer: L.Trainer, *rest: object) -> None:
        assert trainer.num_training_batches == 2  # groups of 10 steps
        if trainer.global_step == 30:
            os.kill(os.getpid(), signal.SIGTERM)

    split = [*args, "--log-dir", str(tmp_path / "split")]
    with monkeypatch.context() as patch:
        patch.setattr(GracefulInterrupt, "on_train_batch_end", terminate_after_step_30, raising=False)
        assert train_main(split) == 128 + signal.SIGTERM
    assert "SIGTERM stopped training in epoch 1 after step 30" in capsys.readouterr().err
    last = tmp_path / "split/version_0/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 30
    assert train_main([*split, "--ckpt-path", "last"]) == 0
    straight = torch.load(tmp_path / "straight/version_0/checkpoints/last.ckpt", weights_only=True)
    resumed = torch.load(last, weights_only=True)
    assert straight["global_step"] == resumed["global_step"] == 60
    for name, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name


def test_two_process_ddp_groups_equal_one_step_per_batch(run_args: list[str], tmp_path: Path) -> None:
    """Each rank's 250 images at batch 25: groups of 10; gradients are still averaged every step."""
    weights = {}
    for steps in ("1", "10"):
        log_dir = tmp_path / f"steps{steps}"
        cmd = [sys.executable, TRAIN, *run_args, "--batch-size", "25", "--log-every-n-steps", "10"]
        cmd += ["--devices", "2", "--strategy", "ddp", "--steps-per-batch", steps, "--log-dir", str(log_dir)]
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("LIT_MNIST_RUN", "RANK", "LOCAL_RANK"))
        }
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        checkpoint = torch.load(log_dir / "version_0/checkpoints/last.ckpt", weights_only=True)
        assert checkpoint["global_step"] == 20  # 2 epochs of 10 steps per rank
        weights[steps] = checkpoint["state_dict"]
    for name, value in weights["1"].items():
        assert torch.equal(value, weights["10"][name]), name


@pytest.mark.parametrize(("first", "then"), [("10", "1"), ("1", "10")])
def test_resume_with_another_group_size_at_an_epoch_end(
    first: str, then: str, run_args: list[str], tmp_path: Path
) -> None:
    args = [*run_args, "--batch-size", "25", "--log-every-n-steps", "10"]
    straight = [*args, "--max-epochs", "2", "--log-dir", str(tmp_path / "straight")]
    assert train_main([*straight, "--steps-per-batch", then]) == 0
    split = [*args, "--log-dir", str(tmp_path / "split")]
    assert train_main([*split, "--max-epochs", "1", "--steps-per-batch", first]) == 0
    assert train_main([*split, "--max-epochs", "2", "--steps-per-batch", then, "--ckpt-path", "last"]) == 0
    a, b = (
        torch.load(tmp_path / n / "version_0/checkpoints/last.ckpt", weights_only=True)
        for n in ("straight", "split")
    )
    assert a["global_step"] == b["global_step"] == 40  # the step count carried across the change
    assert b["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] == 40
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name


def test_mid_epoch_resume_with_another_group_size_is_refused_and_keeps_the_checkpoint(
    run_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*run_args, "--batch-size", "25", "--log-every-n-steps", "10", "--max-epochs", "3"]
    args += ["--ckpt-every-n-steps", "10"]
    assert train_main([*args, "--max-steps", "30"]) == 0  # stops in epoch 1
    last = tmp_path / "logs/version_0/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 30
    before = last.read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train_main([*args, "--max-steps", "60", "--steps-per-batch", "1", "--ckpt-path", "last"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "was written in the middle of an epoch" in err[0]
    assert "batch_size=250 but this loader has batch_size=25" in err[0]
    assert "resume it with the flags it was started with" in err[0]
    assert last.read_bytes() == before  # not replaced by a half-restored state
    assert train_main([*args, "--max-steps", "60", "--ckpt-path", "last"]) == 0  # the same flags resume
    assert torch.load(last, weights_only=True)["global_step"] > 30
