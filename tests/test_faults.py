"""Faults in checkpoints: each answered with one line, nothing lost, no payload ever run."""

import errno
import io
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from lit_mnist.checkpoints import AtomicCheckpointIO
from lit_mnist.cli.train import train_main
from lit_mnist.errors import CheckpointWriteError, RunLockedError
from lit_mnist.runtime import LOCK_NAME, PARTIAL_SUFFIX, lock_run, remove_stale_partials


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        train_main(argv)
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def trained(run_args: list[str], tmp_path: Path) -> Path:
    """The checkpoints folder of a finished 1-epoch tiny run."""
    assert train_main([*run_args, "--max-epochs", "1"]) == 0
    return next((tmp_path / "logs").glob("version_*")) / "checkpoints"


def test_truncated_checkpoint(trained: Path, run_args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    bad = trained.parent / "truncated.ckpt"
    bad.write_bytes((trained / "last.ckpt").read_bytes()[:5000])
    line = _usage_error([*run_args, "--ckpt-path", str(bad)], capsys)
    assert f"--ckpt-path {bad} is not a readable lit_mnist checkpoint" in line


def test_file_that_is_not_a_checkpoint(
    tmp_path: Path, run_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "notes.ckpt"
    bad.write_text("hello")
    assert "is not a readable lit_mnist checkpoint" in _usage_error(
        [*run_args, "--ckpt-path", str(bad)], capsys
    )
    other = tmp_path / "tensor.ckpt"
    torch.save({"weights": torch.zeros(3)}, other)
    assert "is not a Lightning checkpoint" in _usage_error([*run_args, "--ckpt-path", str(other)], capsys)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.marker, "the payload ran"))


def test_malicious_checkpoint_never_runs_its_payload(
    tmp_path: Path, run_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": _Payload(marker)}, f)
    torch.save({"state_dict": {}, "extra": _Payload(marker)}, tmp_path / "evil2.ckpt")
    for path in (evil, tmp_path / "evil2.ckpt"):
        line = _usage_error([*run_args, "--ckpt-path", str(path)], capsys)
        assert "is not a readable lit_mnist checkpoint" in line
    assert not marker.exists()


class _FillingFile:
    """A file that takes ``room`` bytes, then fails each write as a full disk does."""

    def __init__(self, f: Any, room: int) -> None:
        self.f, self.room, self.written = f, room, 0

    def write(self, data: bytes) -> int:
        if self.written + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written += len(data)
        return int(self.f.write(data))

    def flush(self) -> None:
        self.f.flush()


def _disk_full_after_half(monkeypatch: pytest.MonkeyPatch, fails: str = "save") -> None:
    """Every torch.save from now on writes half of the checkpoint, then the disk is full.

    ``fails="save"``: torch.save raises the OSError itself. ``fails="file"``: the file's write raises it
    inside torch's own archive writer, which then raises its ``RuntimeError`` (``[enforce fail at
    inline_container.cc] ... unexpected pos``), as torch.save does on a real full disk.
    """
    real_save = torch.save

    def disk_full(obj: object, f: Any, *args: Any, **kwargs: Any) -> None:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        if fails == "file":
            real_save(obj, _FillingFile(f, buffer.tell() // 2), *args, **kwargs)
            raise AssertionError("torch.save wrote a whole checkpoint into half of it")
        f.write(buffer.getvalue()[: buffer.tell() // 2])  # half of it reaches the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)


@pytest.mark.parametrize("fails", ["save", "file"])
def test_failing_save_keeps_the_previous_checkpoint(
    fails: str,
    run_args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The disk fills up in the middle of writing epoch 2's checkpoint: the message names that file,
    the files written before are byte for byte as they were, no partial file is left beside them, and
    the run resumes from its last.ckpt once there is room again. torch's own RuntimeError for the
    failed write (``fails="file"``) gives the same one line as an OSError."""
    assert train_main(run_args) == 0
    checkpoints = next((tmp_path / "logs").glob("version_*")) / "checkpoints"
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}

    _disk_full_after_half(monkeypatch, fails)
    capsys.readouterr()
    assert train_main([*run_args, "--ckpt-path", "last", "--max-epochs", "3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert re.search(
        rf"{re.escape(str(checkpoints))}/\S+\.ckpt was not written \(\[Errno 28\] No space left on device\)",
        err[0],
    ), err[0]
    assert f"checkpoints written before are intact in {checkpoints}" in err[0]
    assert f"the last one, {checkpoints / 'last.ckpt'}, holds epoch 1" in err[0]
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in checkpoints.iterdir()}  # hidden partial files included
    assert after == before
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1
    # the last checkpoint names a best checkpoint that exists (the failed one was never recorded)
    best = [s["best_model_path"] for k, s in last["callbacks"].items() if "val/acc" in k]
    assert best and Path(best[0]).is_file()
    assert train_main([*run_args, "--ckpt-path", "last", "--max-epochs", "3"]) == 0
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 2


@pytest.mark.parametrize("fails", ["save", "file"])
def test_atomic_checkpoint_io_keeps_the_old_file_when_a_save_fails(
    fails: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io_plugin = AtomicCheckpointIO()
    target = tmp_path / "ckpts" / "last.ckpt"
    io_plugin.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    old = target.read_bytes()
    assert torch.equal(torch.load(target, weights_only=True)["state_dict"]["w"], torch.ones(3))

    with monkeypatch.context() as patch:
        _disk_full_after_half(patch, fails)
        with pytest.raises(CheckpointWriteError, match=r"last\.ckpt was not written \(\[Errno 28\] No space"):
            io_plugin.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}}, target)
    assert target.read_bytes() == old
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no partial file beside it


def test_atomic_checkpoint_io_on_a_real_full_disk(tmp_path: Path) -> None:
    """A checkpoint larger than a 256 KiB tmpfs: one CheckpointWriteError naming the file and the full
    disk, the old file as it was, no partial file. Root only (mount); skips elsewhere."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)]
    if (
        os.geteuid() != 0
        or shutil.which("mount") is None
        or subprocess.run(mount, capture_output=True).returncode
    ):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        target = folder / "last.ckpt"
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
        old = target.read_bytes()
        with pytest.raises(CheckpointWriteError, match=r"last\.ckpt was not written \(\[Errno 28\] No space"):
            AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(100_000)}}, target)
        assert target.read_bytes() == old
        assert [p.name for p in folder.iterdir()] == ["last.ckpt"]
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_atomic_checkpoint_io_tells_torch_write_failures_from_other_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's message for a failed write, without the OSError behind it, is a CheckpointWriteError; a
    RuntimeError of torch.save that is not a failed write passes unchanged. No partial file either way."""
    target = tmp_path / "last.ckpt"
    for message, expected in [
        ("[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662", CheckpointWriteError),
        ("cannot pickle this object", RuntimeError),
    ]:

        def failing(obj: object, f: Any, *args: Any, message: str = message, **kwargs: Any) -> None:
            f.write(b"PK")
            raise RuntimeError(message)

        monkeypatch.setattr(torch, "save", failing)
        with pytest.raises(expected, match=re.escape(message)) as info:
            AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, target)
        assert type(info.value) is expected
        assert list(tmp_path.iterdir()) == []


def test_atomic_checkpoint_io_refuses_a_silently_truncated_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that loses the end of the file without an error (a faulty disk, a network filesystem):
    the check after writing catches it and the old file stays."""
    target = tmp_path / "best.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, target)
    old = target.read_bytes()
    real_save = torch.save

    def lossy(obj: object, f: Any, *args: Any, **kwargs: Any) -> None:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[:-100])

    monkeypatch.setattr(torch, "save", lossy)
    with pytest.raises(CheckpointWriteError, match="not a complete archive"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(10)}}, target)
    assert target.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]


def test_partial_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    """What a save killed with SIGKILL leaves behind is removed on the next start; a live writer's is not."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = socket.gethostname()
    left = tmp_path / f".last.ckpt.{host}.{int(dead.stdout)}.0123abcd{PARTIAL_SUFFIX}"
    live = tmp_path / f".last.ckpt.{host}.{os.getpid()}.4567cdef{PARTIAL_SUFFIX}"
    other_host_old = tmp_path / f".best.ckpt.elsewhere.7.89abcdef{PARTIAL_SUFFIX}"
    other_host_new = tmp_path / f".best.ckpt.elsewhere.8.89abcdef{PARTIAL_SUFFIX}"
    for path in (left, live, other_host_old, other_host_new):
        path.write_bytes(b"half a checkpoint")
    os.utime(other_host_old, (time.time() - 3600, time.time() - 3600))
    (tmp_path / "last.ckpt").write_bytes(b"kept")
    assert sorted(remove_stale_partials(tmp_path)) == sorted([left, other_host_old])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.ckpt", live.name, other_host_new.name])


def test_out_of_memory_suggests_a_smaller_batch(
    run_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device OOM in epoch 1 (simulated: no GPU here) ends with one line naming what to change."""
    from lit_mnist.module import MNISTClassifier

    real_step = MNISTClassifier.training_step

    def step(self: MNISTClassifier, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.current_epoch == 1 and batch_idx == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(MNISTClassifier, "training_step", step)
    capsys.readouterr()
    assert train_main(run_args) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train.py:")]
    assert len(lines) == 1, lines
    line = lines[0]
    assert "out of memory on cpu during training (epoch 1, step" in line
    assert "at --batch-size 32: CUDA out of memory. Tried to allocate 2.00 GiB (simulated)" in line
    assert "pass a smaller --batch-size (e.g. 16; it is per device)" in line
    assert "--precision bf16-mixed" in line and "--loader torchvision" in line
    # nothing lost: epoch 0's checkpoints are intact and load
    checkpoints = next((tmp_path / "logs").glob("version_*")) / "checkpoints"
    assert f"checkpoints written before are in {checkpoints}" in line
    best = next(checkpoints.glob("epoch00-*.ckpt"))
    assert MNISTClassifier.load_from_checkpoint(best, weights_only=True) is not None


def _other_filesystem_than_tmp() -> Path:
    """A folder on another filesystem than the system's temporary folder (/dev/shm, a tmpfs), or skip."""
    import tempfile

    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm on this machine")
    if os.stat(shm).st_dev == os.stat(tempfile.gettempdir()).st_dev:
        pytest.skip("/dev/shm is on the same filesystem as the temporary folder")
    return shm


def test_kill_9_during_saves_on_another_filesystem(run_args: list[str], tmp_path: Path) -> None:
    """The cluster layout: logs on another filesystem than /tmp. A run saving last.ckpt every 2 steps is
    killed with SIGKILL while a checkpoint is being written (a partial file is seen), then resumed with
    --ckpt-path last, three times: every .ckpt left is complete and loads with weights_only=True, each
    resume goes on from there, and the partial files of the killed processes are removed."""
    import shutil
    import signal
    import tempfile

    shm = _other_filesystem_than_tmp()
    log_dir = Path(tempfile.mkdtemp(prefix="lit_mnist_kill9_", dir=shm))
    try:
        args = [
            *run_args, "--log-dir", str(log_dir), "--max-epochs", "3", "--hidden-sizes", "1024", "1024",
            "--ckpt-every-n-steps", "2", "--logger", "csv",
        ]  # fmt: skip
        checkpoints = log_dir / "version_0" / "checkpoints"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIT_MNIST_RUN")}
        steps = []
        for attempt in range(3):
            resume = ["--ckpt-path", "last"] if attempt else []
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).parents[1] / "scripts" / "train.py"), *args, *resume],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd=tmp_path,
                env=env,
            )
            deadline = time.monotonic() + 120
            seen = None
            while proc.poll() is None and time.monotonic() < deadline:  # a save after the first last.ckpt
                if (checkpoints / "last.ckpt").is_file() and (
                    seen := next(checkpoints.glob(f".*{PARTIAL_SUFFIX}"), None)
                ):
                    break
            os.kill(proc.pid, signal.SIGKILL)
            _, err = proc.communicate(timeout=60)
            assert seen is not None, f"no save in progress was seen: {err.decode()[-2000:]}"
            assert proc.returncode == -signal.SIGKILL
            for ckpt in checkpoints.glob("*.ckpt"):
                torch.load(ckpt, map_location="cpu", weights_only=True)  # complete: raises otherwise
            steps.append(torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"])
        assert steps == sorted(steps) and steps[-1] > 0, steps  # each resume went on from the last
        finished = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).parents[1] / "scripts" / "train.py"),
                *args,
                "--ckpt-path",
                "last",
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=300,
        )
        assert finished.returncode == 0, finished.stderr[-3000:]
        assert "left by a save that was interrupted" in finished.stdout
        assert not list(checkpoints.glob(f".*{PARTIAL_SUFFIX}"))
        assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 2
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


# --------------------------------------------------------------------------- runs that remember what they are
def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes, but TensorBoard's event files: the writer thread of an
    earlier run in this test process may still flush into them (a run of its own ends its process)."""
    files = (p for p in sorted(root.rglob("*")) if p.is_file() and "tfevents" not in p.name)
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--dataset", "fashion-mnist"],
            "was trained on --dataset mnist and this run asks for --dataset fashion-mnist",
        ),
        (["--optimizer", "adam"], "was written with --optimizer sgd and this run asks for adam"),
        (["--hidden-sizes", "32"], "was written with --hidden-sizes 128 64 and this run asks for 32"),
        (["--model", "cnn"], "was written with --model mlp and this run asks for cnn"),
    ],
    ids=["dataset", "optimizer", "hidden-sizes", "model"],
)
def test_resume_with_another_dataset_or_model_is_refused(
    flags: list[str], message: str, trained: Path, run_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """One line, exit 2, before anything is written: the run's folder and config.yaml stay as they were."""
    logs = trained.parent.parent
    before = _tree(logs)
    line = _usage_error([*run_args, "--ckpt-path", "last", *flags], capsys)
    assert line.startswith(f"train.py: error: --ckpt-path {trained / 'last.ckpt'} {message}"), line
    assert "(see its run's config.yaml: --config)" in line
    assert _tree(logs) == before


def test_resume_checks_the_widths_of_its_own_network_only(
    run_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CNN run resumed with other --cnn-channels is refused (one line, exit 2); the MLP's --hidden-sizes
    do not shape the CNN, so a resume that passes them goes on."""
    cnn = [*run_args, "--model", "cnn", "--cnn-channels", "4", "8", "--cnn-hidden-size", "16"]
    assert train_main([*cnn, "--max-epochs", "1"]) == 0
    line = _usage_error(
        [*cnn, "--max-epochs", "2", "--ckpt-path", "last", "--cnn-channels", "8", "8"], capsys
    )
    assert "was written with --cnn-channels 4 8 and this run asks for 8 8" in line, line
    assert train_main([*cnn, "--max-epochs", "2", "--ckpt-path", "last", "--hidden-sizes", "32"]) == 0
    assert len(list((tmp_path / "logs").glob("version_*"))) == 1  # the same run, trained further


def test_resume_from_a_weights_only_checkpoint_is_refused(
    trained: Path, run_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint with the weights only (``ModelCheckpoint(save_weights_only=True)``: no optimizer state,
    no loop progress) cannot resume: one line, exit 2."""
    full = torch.load(trained / "last.ckpt", weights_only=True)
    weights_only = tmp_path / "weights.ckpt"
    torch.save(
        {k: v for k, v in full.items() if k not in ("optimizer_states", "lr_schedulers", "loops")},
        weights_only,
    )
    line = _usage_error([*run_args, "--ckpt-path", str(weights_only)], capsys)
    assert line == (
        f"train.py: error: --ckpt-path {weights_only} holds the weights only (no optimizer state or training "
        "progress, as a checkpoint saved with save_weights_only): it cannot resume training; resume from the "
        "run's last.ckpt, or use it with evaluate.py, predict.py or export.py"
    )


def test_checkpoint_records_its_dataset(tiny_data: Path, tmp_path: Path) -> None:
    """A Fashion-MNIST checkpoint copied out of its run folder (no config.yaml beside it) still says what
    it is; evaluate, predict and export take the dataset from it, and refuse another --dataset."""
    import shutil

    from lit_mnist.checkpoints import load_checkpoint
    from lit_mnist.errors import UsageError
    from lit_mnist.inference import resolve_dataset
    from tests.conftest import shrunk_args, write_tiny_mnist

    data = write_tiny_mnist(tmp_path / "data", folder="FashionMNIST")
    args = [*shrunk_args(data, tmp_path / "logs", max_epochs=1), "--dataset", "fashion-mnist"]
    assert train_main(args) == 0
    copied = tmp_path / "elsewhere" / "model.ckpt"
    copied.parent.mkdir()
    shutil.copy(tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt", copied)
    record = torch.load(copied, weights_only=True)["lit_mnist_data"]
    assert record["dataset"] == "fashion-mnist" and record["mean"] == 0.2860 and record["num_classes"] == 10
    assert record["classes"][9] == "Ankle boot"
    ckpt = load_checkpoint(copied)
    assert resolve_dataset(None, ckpt) == ("fashion-mnist", "the checkpoint")
    with pytest.raises(UsageError, match="was trained on fashion-mnist"):
        resolve_dataset("mnist", ckpt)


def test_moved_run_folder_resumes_and_tests_its_own_best(run_args: list[str], tmp_path: Path) -> None:
    import json
    import shutil

    # csv: TensorBoard's writer thread of the first run, still open in this process, would write into the
    # folder it was given after the move (in a run of its own, the process has ended)
    run_args = [*run_args, "--logger", "csv"]
    first = [*run_args, "--log-dir", str(tmp_path / "before")]
    assert train_main(first) == 0
    shutil.move(tmp_path / "before", tmp_path / "after")
    run = tmp_path / "after" / "version_0"
    best = Path(json.loads((run / "results.json").read_text())["best_checkpoint"]).name
    # nothing left to train (--max-epochs 2 reached): the best checkpoint remembered is the old path's
    resume = [
        *run_args,
        "--log-dir",
        str(tmp_path / "after"),
        "--ckpt-path",
        str(run / "checkpoints" / "last.ckpt"),
    ]
    assert train_main(resume) == 0
    assert json.loads((run / "results.json").read_text())["best_checkpoint"] == str(
        run / "checkpoints" / best
    )
    assert train_main([*resume, "--max-epochs", "3"]) == 0  # and training goes on in the moved folder
    results = json.loads((run / "results.json").read_text())
    assert Path(results["best_checkpoint"]).parent == run / "checkpoints"
    assert Path(results["best_checkpoint"]).is_file()


def test_checkpoint_copied_from_another_run_never_tests_that_runs_best(
    run_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Resuming from a copy of run A's last.ckpt into a new run: the final test does not report A's best
    checkpoint as this run's (it is not in this run's folder); it tests this run's weights."""
    import json
    import shutil

    assert train_main([*run_args, "--log-dir", str(tmp_path / "a")]) == 0
    copied = tmp_path / "copy.ckpt"
    shutil.copy(tmp_path / "a" / "version_0" / "checkpoints" / "last.ckpt", copied)
    a_files = _tree(tmp_path / "a")
    capsys.readouterr()
    assert train_main([*run_args, "--log-dir", str(tmp_path / "b"), "--ckpt-path", str(copied)]) == 0
    err = capsys.readouterr().err
    assert "is not in" in err and "the test uses the weights at the end of training" in err
    results = json.loads((tmp_path / "b" / "version_0" / "results.json").read_text())
    assert results["best_checkpoint"] is None and results["test_acc"] > 0.5
    assert _tree(tmp_path / "a") == a_files


# --------------------------------------------------------------------------- one process per run folder
def test_run_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    with lock_run(tmp_path) as held:
        assert held.run_dir == tmp_path
        with pytest.raises(
            RunLockedError, match=rf"process {os.getpid()} on host {re.escape(socket.gethostname())}"
        ):
            lock_run(tmp_path)  # a second open file of the same process is refused as another process is
    lock_run(tmp_path).release()  # free again


_HOLD_LOCK = (
    "import sys, time; from pathlib import Path; from lit_mnist.runtime import lock_run\n"
    "lock = lock_run(Path(sys.argv[1])); print('locked', flush=True); time.sleep(600)"
)


def test_second_process_resuming_a_run_is_refused_until_the_first_dies(
    trained: Path, run_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A requeued job resumes a run while the old job still writes into it: one line naming the holder,
    exit 1, the run's files untouched. Once the holder is killed with SIGKILL the resume goes ahead:
    the kernel released its lock, no stale lock file blocks it."""
    run = trained.parent
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = {p.name: p.read_bytes() for p in trained.iterdir()}
        for ckpt in ("last", str(trained / "last.ckpt")):
            capsys.readouterr()
            assert train_main([*run_args, "--max-epochs", "2", "--ckpt-path", ckpt]) == 1
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1, err
            assert err[0].startswith(
                f"train.py: error: {run} is in use by another run (process {holder.pid} on host "
                f"{socket.gethostname()}, since "
            ), err[0]
            assert "wait until that one has ended (or stop it), then run this command again" in err[0]
        assert {p.name: p.read_bytes() for p in trained.iterdir()} == before
    finally:
        holder.kill()  # SIGKILL: no chance to release anything itself
        holder.communicate(timeout=30)
    assert train_main([*run_args, "--max-epochs", "2", "--ckpt-path", "last"]) == 0
    assert torch.load(trained / "last.ckpt", weights_only=True)["epoch"] == 1
    assert f"pid {os.getpid()} " in (run / LOCK_NAME).read_text()  # the last holder, for the next message


def test_a_new_run_holds_its_folder_while_it_trains(run_args: list[str], tmp_path: Path) -> None:
    import lightning as L

    from lit_mnist.cli.flags import parse_run
    from lit_mnist.run import train

    refused: list[str] = []

    class TryTheLock(L.Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            try:
                lock_run(tmp_path / "logs" / "version_0").release()
            except RunLockedError as err:
                refused.append(str(err))

    cfg = parse_run(
        [
            *run_args,
            "--max-epochs",
            "1",
            "--limit-train-batches",
            "2",
            "--limit-val-batches",
            "1",
            "--log-every-n-steps",
            "1",
        ]
    )
    train(cfg, callbacks=[TryTheLock()])
    assert len(refused) == 1 and f"process {os.getpid()}" in refused[0]
    lock_run(tmp_path / "logs" / "version_0").release()  # released when the run ended
