"""Step groups: several optimizer steps per training batch give the same run as one step per batch.

The tiny dataset has 500 training images; at batch 25 that is 20 steps per epoch. With groups of 10,
Lightning sees 2 training batches per epoch and is given ``log_every_n_steps`` in groups.
"""

from __future__ import annotations

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
from tensorboard.backend.event_processing import event_accumulator as ea
from torch import Tensor

from lit_mnist import MNISTClassifier, MNISTDataModule
from lit_mnist.cli.train import train_main
from lit_mnist.errors import ConfigError
from lit_mnist.groups import StepGroupPlan, StepGroups, StepProgressBar, group_size
from lit_mnist.loggers import MonitoringTensorBoardLogger
from lit_mnist.stopping import NonFiniteLossGuard

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "scripts" / "train.py")
LOG_EVERY = 10  # optimizer steps


def _fit(
    data: Path,
    log_dir: Path | None,
    steps_per_batch: int,
    hparams: dict[str, Any] | None = None,
    cls: type[MNISTClassifier] = MNISTClassifier,
    callbacks: list[L.Callback] | None = None,
    ckpt_path: Path | None = None,
    **trainer_kwargs: Any,
) -> tuple[MNISTClassifier, L.Trainer]:
    """Fit 2 epochs as scripts/train.py would, with groups of ``steps_per_batch`` (1: plain Lightning)."""
    L.seed_everything(3, verbose=False)
    model = cls(**(hparams or {}), steps_per_batch=steps_per_batch)
    datamodule = MNISTDataModule(
        str(data), batch_size=25, val_size=100, download=False, steps_per_batch=steps_per_batch
    )
    kwargs: dict[str, Any] = dict(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        log_every_n_steps=LOG_EVERY // steps_per_batch,
        enable_checkpointing=False,
        enable_progress_bar=False,
        logger=False,
        callbacks=[*(callbacks or []), StepGroups(steps_per_batch)],
    )  # the model summary stays on: it runs the example input through the module
    if log_dir is not None:
        kwargs["logger"] = MonitoringTensorBoardLogger(
            str(log_dir), name="", version=0, default_hp_metric=False
        )
        kwargs["callbacks"].append(LearningRateMonitor())
    kwargs.update(trainer_kwargs)
    trainer = L.Trainer(**kwargs)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    return model, trainer


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = ea.EventAccumulator(str(log_dir / "version_0"), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name


class _RatePerStep(L.Callback):
    """The learning rate each optimizer step used, by step."""

    def __init__(self) -> None:
        self.rates: dict[int, float] = {}

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        self.rates[trainer.global_step] = optimizer.param_groups[0]["lr"]


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
    rates = _RatePerStep()
    one, t1 = _fit(tiny_data, tmp_path / "one", 1, hparams, callbacks=[rates])
    grouped, tg = _fit(tiny_data, tmp_path / "grouped", 10, hparams)
    assert t1.lightning_module.automatic_optimization and not tg.lightning_module.automatic_optimization
    assert (t1.num_training_batches, tg.num_training_batches) == (20, 2)
    assert t1.global_step == tg.global_step == 40
    _assert_same_parameters(one, grouped)
    assert t1.optimizers[0].param_groups[0]["lr"] == tg.optimizers[0].param_groups[0]["lr"]

    s1, sg = _scalars(tmp_path / "one"), _scalars(tmp_path / "grouped")
    assert s1.keys() == sg.keys()
    assert [step for step, _ in s1["train/loss"]] == [9, 19, 29, 39]
    for tag in s1.keys() - {"lr-SGD", "lr-Adam"}:
        assert s1[tag] == sg[tag], tag  # the same values at the same optimizer steps
    # The learning-rate monitor runs before a batch (per step) or an epoch: with groups, a per-step rate is
    # sampled before the group's first step instead of the logging step. Every point is the rate that step used.
    lr_tag = next(tag for tag in sg if tag.startswith("lr-"))
    per_step = hparams["scheduler"] == "onecycle"
    assert [step for step, _ in sg[lr_tag]] == (
        [0, 10, 20, 30] if per_step else [step for step, _ in s1[lr_tag]]
    )
    for step, value in sg[lr_tag]:
        assert value == pytest.approx(rates.rates[step], rel=1e-6), step


class _WarmUp(MNISTClassifier):
    """Lightning's documented learning-rate warm-up: an ``optimizer_step`` override."""

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        self.calls = getattr(self, "calls", 0) + 1
        for group in optimizer.param_groups:
            group["lr"] = 0.01 * min(1.0, (self.trainer.global_step + 1) / 10)
        optimizer.step(closure=optimizer_closure)


def test_an_optimizer_step_override_runs_at_every_step_of_a_group(tiny_data: Path) -> None:
    one, t1 = _fit(tiny_data, None, 1, cls=_WarmUp)
    grouped, tg = _fit(tiny_data, None, 10, cls=_WarmUp)
    assert one.calls == grouped.calls == t1.global_step == tg.global_step == 40
    _assert_same_parameters(one, grouped)


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
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


def test_step_hooks_run_at_every_step_of_a_group(tiny_data: Path) -> None:
    one_hooks, grouped_hooks = _GradientNorms(), _GradientNorms()
    one, _ = _fit(tiny_data, None, 1, callbacks=[one_hooks])
    grouped, trainer = _fit(tiny_data, None, 10, callbacks=[grouped_hooks])
    assert trainer.global_step == 40
    assert grouped_hooks.calls == one_hooks.calls == {"on_before_backward": 40, "on_after_backward": 40}
    assert grouped_hooks.norms == one_hooks.norms and len(one_hooks.norms) == 40
    _assert_same_parameters(one, grouped)


def test_max_steps_that_the_group_size_divides_stops_exactly(tiny_data: Path) -> None:
    one, t1 = _fit(tiny_data, None, 1, max_steps=15)
    grouped, tg = _fit(tiny_data, None, 5, max_steps=15)
    assert t1.global_step == tg.global_step == 15
    _assert_same_parameters(one, grouped)


def test_the_progress_bar_counts_optimizer_steps(tiny_data: Path) -> None:
    bar = StepProgressBar(10, refresh_rate=5)
    _, trainer = _fit(tiny_data, None, 10, callbacks=[bar], enable_progress_bar=True)
    assert trainer.num_training_batches == 2
    assert bar.total_train_batches == 20
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (20, 20)


class _OwnTrainingStep(MNISTClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return super().training_step(batch, batch_idx)


class _OwnClipping(MNISTClassifier):
    def configure_gradient_clipping(self, optimizer: Any, *args: Any, **kwargs: Any) -> None:
        self.clip_gradients(optimizer, gradient_clip_val=1.0)


@pytest.mark.parametrize(
    ("cls", "hook"), [(_OwnTrainingStep, "training_step"), (_OwnClipping, "configure_gradient_clipping")]
)
def test_a_hook_groups_cannot_run_is_refused_when_the_module_is_built(cls: type, hook: str) -> None:
    with pytest.raises(ConfigError, match=f"must be 1 for {cls.__name__}, which overrides {hook}"):
        cls(steps_per_batch=10)
    assert cls().automatic_optimization  # one step per batch: Lightning calls every hook


class _ZeroGradWatcher(L.Callback):
    def on_before_zero_grad(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        pass


class _TwoOptimizers(MNISTClassifier):
    def configure_optimizers(self) -> Any:
        first, *rest = list(self.parameters())
        return [torch.optim.SGD([first], lr=0.01), torch.optim.SGD(rest, lr=0.01)]


def test_what_groups_cannot_do_is_refused_when_fit_starts(tiny_data: Path) -> None:
    with pytest.raises(
        ConfigError, match="must be 1 with the callback _ZeroGradWatcher: it has on_before_zero_grad"
    ):
        _fit(tiny_data, None, 10, callbacks=[_ZeroGradWatcher()])
    with pytest.raises(ConfigError, match="must be 1 when configure_optimizers returns 2 optimizers"):
        _fit(tiny_data, None, 10, cls=_TwoOptimizers)


def test_module_and_datamodule_must_agree(tiny_data: Path) -> None:
    def fit(module_steps: int, data_steps: int) -> None:
        trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False)
        datamodule = MNISTDataModule(str(tiny_data), batch_size=25, val_size=100, steps_per_batch=data_steps)
        trainer.fit(MNISTClassifier(steps_per_batch=module_steps), datamodule=datamodule)

    with pytest.raises(ConfigError, match="is 10 but the training batch is not a step group"):
        fit(10, 1)
    with pytest.raises(ConfigError, match="is 1 but the training batch is not an \\(images, targets\\) pair"):
        fit(1, 10)
    with pytest.raises(ConfigError, match="is 1 in MNISTClassifier and 10 in StepGroups"):
        L.Trainer(max_epochs=1, callbacks=[StepGroups(10)], logger=False).fit(
            MNISTClassifier(), datamodule=MNISTDataModule(str(tiny_data), val_size=100)
        )
    with pytest.raises(ConfigError, match="must be 1 with --loader torchvision"):
        MNISTDataModule(str(tiny_data), loader="torchvision", steps_per_batch=10)


def test_resuming_with_another_group_size_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    """Lightning counts automatic and manual optimizer steps apart: the step count would restart."""
    _, trainer = _fit(tiny_data, None, 10, max_epochs=1)
    path = tmp_path / "groups.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(
        ConfigError, match="written by a run with 10 optimizer step\\(s\\) per training batch"
    ):
        _fit(tiny_data, None, 1, ckpt_path=path)
    _, resumed = _fit(tiny_data, None, 10, ckpt_path=path)
    assert resumed.global_step == 40
    loaded = MNISTClassifier.load_from_checkpoint(path, weights_only=True)  # weights load anywhere
    assert loaded.steps_per_batch == 1 and loaded.automatic_optimization


def test_group_size_divides_every_step_count() -> None:
    assert group_size(10, 860, 50, -1, None) == 10
    assert group_size(10, 860, 50, 9000, 25) == 5
    assert group_size(10, 27, 50) == 1  # batch 2048: 27 steps per epoch
    assert (
        "lowered from 10: --ckpt-every-n-steps 25" in StepGroupPlan(5, 10, "--ckpt-every-n-steps 25").notice()
    )
    assert (
        StepGroupPlan(10, 10).notice().startswith("Step groups: on, 10 optimizer steps per Lightning batch")
    )
    clip = StepGroupPlan(1, 10, "--gradient-clip-val needs one step per batch", ruled_out=True)
    assert clip.notice().endswith(
        "one optimizer step per Lightning batch (--gradient-clip-val needs one step per batch)."
    )
    assert (
        "(no group size above 1 divides 27 optimizer steps"
        in StepGroupPlan(1, 10, "27 optimizer steps").notice()
    )


# --------------------------------------------------------------------------------------------------
# scripts/train.py: the fast path is its choice, made once before the Trainer exists


def _cli_args(run_args: list[str], *extra: str) -> list[str]:
    return [*run_args, "--batch-size", "25", "--log-every-n-steps", "10", *extra]


def _last(log_dir: Path) -> dict[str, Any]:
    return torch.load(log_dir / "version_0/checkpoints/last.ckpt", weights_only=True)


def test_train_py_runs_step_groups_by_default_and_says_so(
    run_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default run and --steps-per-batch 1 end with the same weights and write the same curves."""
    assert train_main([*_cli_args(run_args), "--log-dir", str(tmp_path / "groups")]) == 0
    out = capsys.readouterr().out
    assert "Step groups: on, 10 optimizer steps per Lightning batch" in out
    assert "--steps-per-batch 1 turns them off" in out
    assert (
        train_main([*_cli_args(run_args, "--steps-per-batch", "1"), "--log-dir", str(tmp_path / "one")]) == 0
    )
    assert "Step groups: off (one optimizer step per Lightning batch)" in capsys.readouterr().out

    groups, one = _last(tmp_path / "groups"), _last(tmp_path / "one")
    assert groups["global_step"] == one["global_step"] == 40
    for name, value in one["state_dict"].items():
        assert torch.equal(value, groups["state_dict"][name]), name
    sg, s1 = _scalars(tmp_path / "groups"), _scalars(tmp_path / "one")
    assert sg.keys() == s1.keys()
    for tag in s1.keys() - {"lr-SGD"}:
        assert [step for step, _ in sg[tag]] == [step for step, _ in s1[tag]], tag
        if not tag.startswith("perf/"):  # timings differ, of course
            assert [value for _, value in sg[tag]] == [value for _, value in s1[tag]], tag


@pytest.mark.parametrize(
    ("extra", "notice"),
    [
        (["--gradient-clip-val", "1.0"], "Step groups: off, one optimizer step per Lightning batch (--gradient-clip-val"),
        (["--loader", "torchvision"], "(--loader torchvision yields one batch at a time)"),
        (["--ckpt-every-n-steps", "5"], "on, 5 optimizer steps per Lightning batch (lowered from 10: --ckpt-every-n-steps 5)"),
        (["--batch-size", "40"], "off, one optimizer step per Lightning batch (no group size above 1 divides 13 optimizer steps per epoch at --batch-size 40"),
    ],
)  # fmt: skip
def test_a_flag_that_rules_groups_out_or_lowers_them_is_named(
    extra: list[str], notice: str, run_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_main(_cli_args(run_args, "--max-epochs", "1", *extra)) == 0
    assert notice in capsys.readouterr().out


def test_sigterm_in_a_group_resumes_exactly(
    run_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Groups of 10 steps, stopped by SIGTERM after step 30 (epoch 1): the resumed run ends with the
    weights of an uninterrupted run with one step per batch."""
    args = _cli_args(run_args, "--max-epochs", "3")
    assert train_main([*args, "--steps-per-batch", "1", "--log-dir", str(tmp_path / "straight")]) == 0

    def terminate_after_step_30(self: L.Callback, trainer: L.Trainer, *rest: object) -> None:
        assert trainer.num_training_batches == 2  # groups of 10 steps
        if trainer.global_step == 30:
            os.kill(os.getpid(), signal.SIGTERM)

    split = [*args, "--log-dir", str(tmp_path / "split")]
    with monkeypatch.context() as patch:
        patch.setattr(NonFiniteLossGuard, "on_train_batch_end", terminate_after_step_30)
        assert train_main(split) == 128 + signal.SIGTERM
    assert "SIGTERM stopped training in epoch 1 after step 30" in capsys.readouterr().err
    assert _last(tmp_path / "split")["global_step"] == 30
    assert train_main([*split, "--ckpt-path", "last"]) == 0
    straight, resumed = _last(tmp_path / "straight"), _last(tmp_path / "split")
    assert straight["global_step"] == resumed["global_step"] == 60
    for name, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name


def test_resume_with_another_group_size_is_one_line_and_keeps_the_checkpoint(
    run_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _cli_args(run_args, "--max-epochs", "2")
    assert train_main([*args, "--max-epochs", "1"]) == 0
    last = tmp_path / "logs/version_0/checkpoints/last.ckpt"
    before = last.read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train_main([*args, "--steps-per-batch", "1", "--ckpt-path", "last"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert (
        "--ckpt-path" in err[0]
        and "was written by a run with 10 optimizer step(s) per training batch" in err[0]
    )
    assert "this run takes 1" in err[0]
    assert last.read_bytes() == before  # not replaced by a half-restored state
    assert train_main([*args, "--ckpt-path", "last"]) == 0  # the same flags resume
    assert torch.load(last, weights_only=True)["global_step"] == 40


def test_mid_epoch_resume_with_another_batch_size_is_refused(
    run_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _cli_args(run_args, "--max-epochs", "3", "--ckpt-every-n-steps", "10")
    assert train_main([*args, "--max-steps", "30"]) == 0  # stops in epoch 1
    last = tmp_path / "logs/version_0/checkpoints/last.ckpt"
    before = last.read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # 10 steps per epoch at batch 50: groups of 10 still
        train_main([*args, "--batch-size", "50", "--max-steps", "60", "--ckpt-path", "last"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "was written in the middle of an epoch" in err[0]
    assert "batch_size=25 but this loader has batch_size=50" in err[0]
    assert last.read_bytes() == before


def test_two_process_ddp_groups_equal_one_step_per_batch(run_args: list[str], tmp_path: Path) -> None:
    """Each rank's 250 images at batch 25: groups of 10; gradients are still averaged every step."""
    weights = {}
    for steps in ("1", "10"):
        log_dir = tmp_path / f"steps{steps}"
        cmd = [sys.executable, TRAIN, *_cli_args(run_args), "--devices", "2", "--strategy", "ddp"]
        cmd += ["--steps-per-batch", steps, "--log-dir", str(log_dir)]
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("LIT_MNIST_RUN", "RANK", "LOCAL_RANK"))
        }
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        if steps == "10":
            assert "Step groups: on, 10 optimizer steps" in result.stdout
        checkpoint = _last(log_dir)
        assert checkpoint["global_step"] == 20  # 2 epochs of 10 steps per rank
        weights[steps] = checkpoint["state_dict"]
    for name, value in weights["1"].items():
        assert torch.equal(value, weights["10"][name]), name


def test_a_group_size_that_does_not_divide_the_epoch_is_refused(tiny_data: Path) -> None:
    """A short last group would shift every step Lightning counts after it."""
    with pytest.raises(ConfigError, match=r"must divide the 20 training batches per epoch .* got 3"):
        _fit(tiny_data, None, 3)


def test_the_datamodule_serves_predictions(tiny_data: Path) -> None:
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    datamodule = MNISTDataModule(str(tiny_data), batch_size=50, val_size=100, download=False)
    batches = trainer.predict(MNISTClassifier(), datamodule=datamodule)
    assert batches is not None
    probabilities = torch.cat(batches)  # type: ignore[arg-type]
    assert probabilities.shape == (200, 10)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(200))
