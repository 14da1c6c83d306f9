"""Scale and resilience: DDP on two CPU processes, torchrun, precision, exact resume, signals, stopping rules."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_mnist import MNISTClassifier, MNISTDataModule
from lit_mnist.cli.evaluate import main as evaluate_main
from lit_mnist.cli.flags import parse_run
from lit_mnist.cli.train import train_main
from lit_mnist.run import train
from lit_mnist.stopping import GracefulInterrupt

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "scripts" / "train.py")


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def _single_process_test_acc(checkpoint: str, data_dir: Path) -> float:
    model = MNISTClassifier.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    dm = MNISTDataModule(str(data_dir), val_size=100)
    dm.setup("test")
    images, labels = dm.split("test")
    with torch.no_grad():
        return (model(images).argmax(-1) == labels).float().mean().item()


def _run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIT_MNIST_RUN", "RANK", "LOCAL_RANK"))}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_two_process_ddp_on_cpu(strategy: str, run_args: list[str], tiny_data: Path, tmp_path: Path) -> None:
    profiler = ["--profiler", "simple"] if strategy == "ddp" else []  # a report per process, all named
    result = _run(
        [sys.executable, TRAIN, *run_args, "--devices", "2", "--strategy", strategy, *profiler], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "logs").iterdir())
    assert [r.name for r in runs] == ["version_0"]  # exactly one set of logs and checkpoints
    if profiler:
        reports = [runs[0] / "fit-profile-0.txt", runs[0] / "fit-profile-1.txt"]
        assert all("run_training_epoch" in report.read_text() for report in reports)
        assert f"Profile:         {reports[0]}, {reports[1]}" in result.stdout
    assert result.stdout.count("Test accuracy:") == 1  # one summary, from rank 0
    results = json.loads((runs[0] / "results.json").read_text())
    # the metric synchronised over both ranks equals one process evaluating the whole test set
    assert results["test_acc"] == pytest.approx(
        _single_process_test_acc(results["best_checkpoint"], tiny_data)
    )


def _group_alive(group: int) -> bool:
    """Whether a process of the group still runs (a zombie no one reaped, e.g. under a container's PID 1
    that does not reap orphans, does not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _parent, process_group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):  # ended meanwhile
            continue
        if int(process_group) == group and state != "Z":
            return True
    return False


@pytest.mark.parametrize(
    ("target", "signum"),
    [
        ("process group", signal.SIGTERM),
        ("launching process", signal.SIGTERM),
        ("process group", signal.SIGINT),
    ],
    ids=["SIGTERM-group", "SIGTERM-rank0", "Ctrl-C-group"],
)
def test_signal_stops_every_ddp_rank_at_one_step(
    target: str, signum: int, run_args: list[str], tmp_path: Path
) -> None:
    """SIGTERM to a 2-process DDP run, to its whole process group (as SLURM sends it) or to the launching
    process alone, or Ctrl-C (a terminal signals the whole group): both ranks stop at the same step, rank 0
    writes last.ckpt, and the run exits 143 (130) within 60 s with nothing left running. (Lightning alone: a collective inside
    its signal handler; one try in three hung for ever.) The resumed run ends with the straight run's
    weights, which it can only do if the checkpoint holds the state of one step on every rank."""
    ddp = ["--devices", "2", "--strategy", "ddp"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIT_MNIST_RUN", "RANK", "LOCAL_RANK"))}
    split = tmp_path / "split"
    proc = subprocess.Popen(
        [sys.executable, TRAIN, *run_args, *ddp, "--max-epochs", "500", "--log-dir", str(split)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
        start_new_session=True,  # its own process group, as a batch job has
    )
    try:
        last = split / "version_0" / "checkpoints" / "last.ckpt"
        deadline = time.monotonic() + 120
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
        if target == "process group":
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=60)
        while _group_alive(proc.pid) and time.monotonic() - sent < 60:  # rank 1 ends too
            time.sleep(0.1)
        assert time.monotonic() - sent < 60
        assert not _group_alive(proc.pid)
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signum, err[-3000:]
    name = signal.Signals(signum).name
    assert err.count(f"train.py: {name} stopped training in epoch") == 1, err[-3000:]  # rank 0 reports
    stopped = torch.load(last, map_location="cpu", weights_only=True)
    assert 0 < stopped["global_step"] < 500 * 8
    assert f"after step {stopped['global_step']}; saved {last}" in err
    if (target, signum) != ("process group", signal.SIGTERM):
        return  # the resume is checked once (below)

    epochs = stopped["epoch"] + 2  # past the stop, mid-epoch (max_epochs shapes no schedule here)
    resumed = _run(
        [
            sys.executable,
            TRAIN,
            *run_args,
            *ddp,
            "--max-epochs",
            str(epochs),
            "--log-dir",
            str(split),
            "--ckpt-path",
            "last",
        ],
        tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = _run(
        [
            sys.executable,
            TRAIN,
            *run_args,
            *ddp,
            "--max-epochs",
            str(epochs),
            "--log-dir",
            str(tmp_path / "straight"),
        ],
        tmp_path,
    )
    assert straight.returncode == 0, straight.stderr[-3000:]
    _assert_same_weights(tmp_path / "straight" / "version_0", split / "version_0")


DRIVER = """
import os, signal, sys
from lit_mnist.cli.train import main
from lit_mnist.stopping import GracefulInterrupt

STAGE = os.environ["STOP_IN"]


def signal_rank_0(self, trainer, *args):
    if trainer.global_rank == 0 and (STAGE == "test" or trainer.sanity_checking):
        os.kill(os.getpid(), signal.SIGTERM)


hook = "on_test_batch_end" if STAGE == "test" else "on_validation_batch_end"
setattr(GracefulInterrupt, hook, signal_rank_0)
sys.exit(main())
"""


@pytest.mark.parametrize("stage", ["sanity check", "test"])
def test_sigterm_outside_training_under_ddp(stage: str, run_args: list[str], tmp_path: Path) -> None:
    """SIGTERM to rank 0 of a 2-process DDP run in the sanity check: both ranks stop at its end, nothing
    saved, exit 143. In the final test: the ranks (unequal numbers of test batches) agree at its end, so
    the finished test is kept: results.json is written, the message says so, exit 143."""
    driver = tmp_path / "driver.py"  # Lightning's DDP launcher starts rank 1 with the same script
    driver.write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIT_MNIST_RUN", "RANK", "LOCAL_RANK"))}
    result = subprocess.run(
        [sys.executable, str(driver), *run_args, "--devices", "2", "--strategy", "ddp"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**env, "STOP_IN": stage},
    )  # fmt: skip
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    run = tmp_path / "logs" / "version_0"
    if stage == "test":
        assert (
            "train.py: SIGTERM came as the final test ended; training (2 epochs, step 16) and the test had "
            f"finished; the results are in {run / 'results.json'}"
        ) in result.stderr
        assert json.loads((run / "results.json").read_text())["test_acc"] > 0
    else:
        assert (
            "train.py: SIGTERM stopped the run before training started (in the sanity check)" in result.stderr
        )
        assert not (run / "checkpoints" / "last.ckpt").exists()
        assert not (run / "results.json").exists()


def test_torchrun_launch_as_in_the_readme(run_args: list[str], tiny_data: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", TRAIN]
    result = _run([*cmd, *run_args, "--devices", "2", "--strategy", "ddp"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r.name for r in (tmp_path / "logs").iterdir()] == ["version_0"]
    results = json.loads((tmp_path / "logs" / "version_0" / "results.json").read_text())
    assert results["test_acc"] == pytest.approx(
        _single_process_test_acc(results["best_checkpoint"], tiny_data)
    )


def test_sigterm_saves_a_checkpoint_that_resumes_exactly(run_args: list[str], tmp_path: Path) -> None:
    args = [*run_args, "--max-epochs", "40"]
    straight = _run([sys.executable, TRAIN, *args, "--log-dir", str(tmp_path / "straight")], tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]

    split_dir = tmp_path / "split"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIT_MNIST_RUN")}
    proc = subprocess.Popen(
        [sys.executable, TRAIN, *args, "--log-dir", str(split_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    last = split_dir / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "SIGTERM stopped training in epoch" in err
    assert f"saved {last}" in err
    assert "Resume with: python scripts/train.py" in err and f"--ckpt-path {last}" in err
    stopped = torch.load(last, map_location="cpu", weights_only=True)
    assert 0 < stopped["global_step"] < 40 * 16  # stopped in the middle of the run

    assert train_main([*args, "--log-dir", str(split_dir), "--ckpt-path", str(last)]) == 0
    _assert_same_weights(tmp_path / "straight" / "version_0", split_dir / "version_0")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_mid_epoch_resume_is_exact(
    signum: int,
    run_args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """16 steps per epoch: the signal arrives at step 21 (inside epoch 1); the resumed run ends identical."""
    assert train_main([*run_args, "--max-epochs", "3", "--log-dir", str(tmp_path / "straight")]) == 0

    def terminate_at_step_21(self: GracefulInterrupt, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == 21:
            os.kill(os.getpid(), signum)

    split = [*run_args, "--max-epochs", "3", "--log-dir", str(tmp_path / "split")]
    with monkeypatch.context() as patch:
        patch.setattr(GracefulInterrupt, "on_train_batch_end", terminate_at_step_21, raising=False)
        assert train_main(split) == 128 + signum
    name = signal.Signals(signum).name
    assert f"{name} stopped training in epoch 1 after step 21" in capsys.readouterr().err
    checkpoint = torch.load(tmp_path / "split/version_0/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 21
    assert train_main([*split, "--ckpt-path", "last"]) == 0
    _assert_same_weights(tmp_path / "straight" / "version_0", tmp_path / "split" / "version_0")


def test_step_checkpoints(run_args: list[str], tmp_path: Path) -> None:
    seen = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
            path = tmp_path / "logs/version_0/checkpoints/last.ckpt"
            if path.exists():
                seen.append(torch.load(path, weights_only=True)["global_step"])

    train(parse_run([*run_args, "--max-epochs", "1", "--ckpt-every-n-steps", "5"]), callbacks=[Spy()])
    assert {5, 10, 15} <= set(seen)


def test_same_seed_same_run_other_seed_other_run(run_args: list[str], tmp_path: Path) -> None:
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        assert (
            train_main([*run_args, "--deterministic", "--seed", seed, "--log-dir", str(tmp_path / name)]) == 0
        )
    _assert_same_weights(tmp_path / "a" / "version_0", tmp_path / "b" / "version_0")
    ra, rb = (json.loads((tmp_path / n / "version_0" / "results.json").read_text()) for n in "ab")
    assert ra["test_loss"] == rb["test_loss"]
    with pytest.raises(AssertionError):
        _assert_same_weights(tmp_path / "a" / "version_0", tmp_path / "c" / "version_0")


def test_early_stopping_on_val_acc(run_args: list[str], tmp_path: Path) -> None:
    # the tiny digits reach val/acc 1.0 within a few epochs; after that nothing improves
    assert (
        train_main([*run_args, "--max-epochs", "30", "--early-stopping-patience", "2", "--lr", "0.05"]) == 0
    )
    results = json.loads(next((tmp_path / "logs").glob("version_*/results.json")).read_text())
    assert results["epochs"] < 30


def test_max_time_stops_the_run(run_args: list[str], tmp_path: Path) -> None:
    started = time.monotonic()
    assert train_main([*run_args, "--max-epochs", "100000", "--max-time", "00:00:00:02"]) == 0
    assert time.monotonic() - started < 60
    results = json.loads(next((tmp_path / "logs").glob("version_*/results.json")).read_text())
    assert 1 <= results["epochs"] < 100000


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true", "64-true", "bf16", "32"])
def test_precisions_run_on_the_cpu(precision: str, run_args: list[str], tmp_path: Path) -> None:
    assert train_main([*run_args, "--precision", precision, "--max-epochs", "3"]) == 0
    results = json.loads(next((tmp_path / "logs").glob("version_*/results.json")).read_text())
    assert results["test_acc"] >= 0.85


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-time", "2h", "--max-time must be DD:HH:MM:SS"),
        ("--max-steps", "0", "--max-steps must be -1 (no limit) or >= 1, got 0"),
        ("--early-stopping-patience", "0", "--early-stopping-patience must be >= 1, got 0"),
        ("--ckpt-every-n-steps", "-5", "--ckpt-every-n-steps must be >= 1, got -5"),
    ],
)
def test_stopping_flags_are_checked(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        train_main([flag, value])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_bf16_mixed_matches_fp32_on_real_mnist(real_data_dir: Path, tmp_path: Path) -> None:
    accuracies = {}
    for precision in ("32-true", "bf16-mixed"):
        log_dir = tmp_path / precision
        args = [
            "--data-dir",
            str(real_data_dir),
            "--max-epochs",
            "1",
            "--accelerator",
            "cpu",
            "--no-progress-bar",
        ]
        assert train_main([*args, "--precision", precision, "--log-dir", str(log_dir)]) == 0
        accuracies[precision] = json.loads((log_dir / "version_0" / "results.json").read_text())["test_acc"]
    assert accuracies["32-true"] >= 0.93  # one epoch of the classic recipe
    assert abs(accuracies["bf16-mixed"] - accuracies["32-true"]) <= 0.005, accuracies


def test_nan_loss_stops_and_keeps_the_checkpoints(
    run_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loss turns NaN in epoch 2 (step 40): the run stops there; checkpoints keep epoch 1's weights."""
    assert train_main([*run_args, "--log-dir", str(tmp_path / "good")]) == 0  # 2 good epochs
    forward = torch.nn.CrossEntropyLoss.forward
    losses = 0

    def diverging_loss(
        self: torch.nn.CrossEntropyLoss, logits: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        nonlocal losses
        loss = forward(self, logits, y)
        if not torch.is_grad_enabled():  # validation
            return loss
        losses += 1
        return loss * float("nan") if losses > 40 else loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", diverging_loss)
    capsys.readouterr()
    assert train_main([*run_args, "--max-epochs", "4", "--log-dir", str(tmp_path / "nan")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(
        "train.py: error: the training loss became nan at epoch 2, step 41; the learning rate"
    )
    assert "is most likely too high: lower --lr" in err[0]
    _assert_same_weights(tmp_path / "good" / "version_0", tmp_path / "nan" / "version_0")
    for path in (tmp_path / "nan" / "version_0" / "checkpoints").iterdir():
        weights = torch.load(path, weights_only=True)["state_dict"]
        assert all(bool(w.isfinite().all()) for w in weights.values()), path.name


def test_diverging_learning_rate_from_the_command_line(
    run_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_main([*run_args, "--lr", "1e6"]) == 1
    err = capsys.readouterr().err
    assert "the training loss became nan at epoch 0" in err
    assert "learning rate (1e+06) is most likely too high" in err


def test_resume_after_a_signal_at_the_last_batch_of_an_epoch(
    run_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM during epoch 0's last batch (step 16): the resumed epoch has no batch left to train,
    ends cleanly (no metric computed from nothing), and the run ends identical to an uninterrupted one."""
    assert train_main([*run_args, "--max-epochs", "2", "--log-dir", str(tmp_path / "straight")]) == 0

    def terminate_at_step_16(self: GracefulInterrupt, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == 16:
            os.kill(os.getpid(), signal.SIGTERM)

    split = [*run_args, "--max-epochs", "2", "--log-dir", str(tmp_path / "split")]
    with monkeypatch.context() as patch:
        patch.setattr(GracefulInterrupt, "on_train_batch_end", terminate_at_step_16, raising=False)
        assert train_main(split) == 128 + signal.SIGTERM
    checkpoint = torch.load(tmp_path / "split/version_0/checkpoints/last.ckpt", weights_only=True)
    assert (checkpoint["global_step"], checkpoint["epoch"]) == (16, 0)
    assert train_main([*split, "--ckpt-path", "last"]) == 0
    _assert_same_weights(tmp_path / "straight" / "version_0", tmp_path / "split" / "version_0")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_signal_during_the_final_test(
    signum: int, run_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Training is done and saved; the test is stopped after a batch: exit 128 + the signal, no results.json,
    and a command that tests the best checkpoint (run here: it works)."""

    def stop_in_test(self: GracefulInterrupt, trainer: L.Trainer, *args: object) -> None:
        os.kill(os.getpid(), signum)

    args = [*run_args, "--log-dir", str(tmp_path / "with space")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(GracefulInterrupt, "on_test_batch_end", stop_in_test, raising=False)
        assert train_main(args) == 128 + signum
    err = capsys.readouterr().err.strip().splitlines()
    name = signal.Signals(signum).name
    if signum == signal.SIGINT:
        assert err.pop(0) == "Ctrl-C: stopping the test after this batch (Ctrl-C again to abort)."
    assert len(err) == 2, err
    assert err[0] == (
        f"train.py: {name} stopped the final test; training had finished (2 epochs, step 32) and its "
        "checkpoints are saved; no test results were written"
    )
    run = tmp_path / "with space" / "version_0"
    assert not (run / "results.json").exists()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    command = shlex.split(err[1].removeprefix("Test it with: "))
    assert command[:2] == ["python", "scripts/evaluate.py"]
    assert Path(command[command.index("--ckpt-path") + 1]).parent == run / "checkpoints"
    assert evaluate_main(command[2:]) == 0
    assert "Test accuracy:" in capsys.readouterr().out


def test_sigterm_during_the_sanity_check(
    run_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before training starts there is nothing new to save: exit 143, a true message, and the resumed run's
    last.ckpt left as it was; the printed command (shell-quoted) starts or resumes the run."""

    armed = True

    def stop_in_sanity_check(self: GracefulInterrupt, trainer: L.Trainer, *args: object) -> None:
        if trainer.sanity_checking and armed:
            os.kill(os.getpid(), signal.SIGTERM)

    args = [*run_args, "--log-dir", str(tmp_path / "with space")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(GracefulInterrupt, "on_validation_batch_end", stop_in_sanity_check, raising=False)
        capsys.readouterr()
        assert train_main(args) == 128 + signal.SIGTERM
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            "train.py: SIGTERM stopped the run before training started (in the sanity check); no checkpoint "
            "was written",
            f"Start it again with: python scripts/train.py {shlex.join(args)}",
        ]
        checkpoints = tmp_path / "with space" / "version_0" / "checkpoints"
        assert not checkpoints.exists() or not list(checkpoints.iterdir())

        armed = False
        assert train_main([*args, "--max-epochs", "1"]) == 0  # version_1, one epoch
        armed = True
        last = tmp_path / "with space" / "version_1" / "checkpoints" / "last.ckpt"
        before = last.read_bytes()
        resume = [*args, "--ckpt-path", "last"]
        capsys.readouterr()
        assert train_main(resume) == 128 + signal.SIGTERM
        err = capsys.readouterr().err.strip().splitlines()
        assert err[0].startswith("train.py: SIGTERM stopped the run before training started")
        assert shlex.split(err[1]) == ["Resume", "with:", "python", "scripts/train.py", *resume]
        assert last.read_bytes() == before
    assert train_main(resume) == 0  # and it does resume
    assert torch.load(last, weights_only=True)["epoch"] == 1


_SLOW_SAVES = """
import sys, time
import lit_mnist.checkpoints
import lit_mnist.module
from lit_mnist.cli.train import train_main

real = lit_mnist.checkpoints.write_durable

def slow(path, write, check=None):  # every save holds its partial file for 3 s: time for a Ctrl-C
    def write_slowly(f):
        write(f)
        print(f"saving {path}", file=sys.stderr, flush=True)
        time.sleep(3)
    real(path, write_slowly, check)

def batch_end(self, outputs, batch, batch_idx):  # a line per batch: the test signals after a step it saw
    print(f"trained step {self.trainer.global_step}", file=sys.stderr, flush=True)

lit_mnist.checkpoints.write_durable = slow
lit_mnist.module.MNISTClassifier.on_train_batch_end = batch_end
sys.exit(train_main(sys.argv[1:]))
"""


def test_second_ctrl_c_while_the_stop_is_saved_exits_130(run_args: list[str], tmp_path: Path) -> None:
    """Ctrl-C, then Ctrl-C again while the stop's last.ckpt is being written: status 130 at once, one line;
    that checkpoint is left unwritten and the one before it is whole and named."""
    script = tmp_path / "slow_saves.py"
    script.write_text(_SLOW_SAVES)
    args = [*run_args, "--max-epochs", "50", "--steps-per-batch", "1", "--save-top-k", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIT_MNIST_RUN")}
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    checkpoints = tmp_path / "logs" / "version_0" / "checkpoints"
    seen: list[str] = []

    def wait_for(text: str) -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            seen.append(line)
            if text in line:
                return
        pytest.fail(f"no {text!r} before the end:\n{''.join(seen)[-3000:]}")

    try:
        wait_for("saving ")  # epoch 0's last.ckpt is being written
        # A batch after that save: the stop then lands on a later step, whose checkpoint is still to be
        # written (a Ctrl-C before epoch 1's first batch would stop at the step just saved: nothing to save)
        wait_for("trained step ")
        assert (checkpoints / "last.ckpt").is_file()
        proc.send_signal(signal.SIGINT)
        wait_for("Ctrl-C: stopping after this batch and saving a checkpoint (Ctrl-C again to abort).")
        wait_for("saving ")  # the stop's checkpoint
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGINT, "".join(seen) + rest
    assert not [line for line in seen if "SIGTERM" in line]  # the user pressed Ctrl-C: nothing says SIGTERM
    held = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    lines = rest.strip().splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(
        r"train\.py: a second Ctrl-C aborted the run in epoch \d+ after step \d+; a checkpoint being written was "
        rf"left unwritten and none is half-written; the last one, {re.escape(str(checkpoints / 'last.ckpt'))}, "
        rf"holds epoch {held['epoch']}, step {held['global_step']}; --ckpt-path last resumes from it",
        lines[0],
    ), lines[0]
    assert [p.name for p in checkpoints.iterdir()] == ["last.ckpt"]  # no partial file left
