"""What training and the commands that use trained models both need, none of it about flags.

The accelerator and precision names the commands accept, the check that a GPU asked for is there,
writing a file so that a reader never sees half of it, and a Trainer that prints nothing but the
result it is asked for.

lit_mnist's own plumbing, shared by its modules: nothing here is public API (``__all__`` is empty).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from lit_mnist.errors import RunLockedError, UsageError

__all__: list[str] = []

if TYPE_CHECKING:
    import lightning as L

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
PRECISIONS = (
    "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "bf16-true", "16-true", "64-true", "64",
)  # fmt: skip
#: Lightning's short forms, passed on as the names it recommends.
PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed", "64": "64-true"}
#: The logger Lightning's Trainer reports its set-up through (GPU available, tips, CUDA devices).
LIGHTNING_LOGGER = "lightning.pytorch"


def check_accelerator(accelerator: str) -> None:
    """Refuse a GPU accelerator on a machine where torch sees none.

    Raises:
        UsageError: one line naming ``--accelerator`` and what to use instead.
    """
    import torch  # here: a command's --help and usage errors need no torch

    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UsageError(
            f"--accelerator {accelerator}: no CUDA GPU is visible on this machine "
            "(torch.cuda.is_available() is False); use --accelerator cpu or auto"
        )


#: The variable OpenMP, torch and Lightning's launchers read for the threads of each process.
THREADS_ENV = "OMP_NUM_THREADS"


def cpu_share() -> int:
    """The CPUs this process may use: its CPU affinity, capped by its cgroup's CPU quota (a container's
    ``--cpus``, a batch job's limit), at least 1. torch's default counts the machine's cores instead, and a
    process with more threads than CPUs spends its time waiting for them (OpenMP threads spin as they wait).
    """
    share = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for quota_file, period_file in (
        ("/sys/fs/cgroup/cpu.max", None),  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"),  # cgroup v1
    ):
        try:
            fields = Path(quota_file).read_text().split()
            if period_file is not None:
                fields.append(Path(period_file).read_text().strip())
            quota, period = int(fields[0]), int(fields[1])
        except (OSError, ValueError, IndexError):  # no such cgroup file, or "max": no quota
            continue
        if quota > 0 and period > 0:
            share = min(share, -(-quota // period))
    return max(1, share)


def set_env(name: str, value: str) -> Callable[[], None]:
    """Set the environment variable ``name`` for the processes a run starts; return what puts it back as it
    was (or removes it) when the run ends."""
    previous = os.environ.get(name)
    os.environ[name] = value

    def restore() -> None:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous

    return restore


def env_threads() -> int | None:
    """:data:`THREADS_ENV` as a number of threads, or ``None`` when it is not set.

    Raises:
        UsageError: one line naming the variable when it is set to anything but a whole number >= 1.
    """
    value = os.environ.get(THREADS_ENV)
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]+", value.strip()) or int(value) < 1:
        raise UsageError(
            f"the environment variable {THREADS_ENV}={value!r} must be a whole number of threads >= 1; "
            f"set it to one (e.g. {THREADS_ENV}=1) or unset it"
        )
    return int(value)


#: The longest file name (in bytes) of the usual filesystems (ext4, XFS, Btrfs, tmpfs, NTFS, APFS).
NAME_MAX = 255


def check_file_name(what: str, name: str) -> None:
    """Refuse a ``name`` (``--study``, ...) that cannot become the name of a file or folder.

    Raises:
        UsageError: one line naming ``what`` and why: empty, ``.`` or ``..``, a ``/`` or NUL in it, or longer
            than :data:`NAME_MAX` bytes.
    """
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise UsageError(f"{what} {name!r} cannot be a folder name: give a name without / (not . or ..)")
    if (size := len(name.encode("utf-8", "surrogateescape"))) > NAME_MAX:
        raise UsageError(
            f"{what} is {size} bytes long and a file name holds at most {NAME_MAX}: give a shorter one"
        )


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its class name when empty), at most ``limit`` characters."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]


def printable(name: str) -> str:
    """``name`` as a terminal may show it: unchanged when every character prints, else escaped as ``repr``
    escapes it (``"\\x1b[31m"``), so that a name read from a file (a class folder, a checkpoint's class
    names) cannot hide itself, break a line or send the terminal an escape sequence."""
    return name if name.isprintable() else repr(name)[1:-1]


# --------------------------------------------------------------------------- atomic files
def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (creating its folder) through a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomic(path, lambda tmp: tmp.write_text(text))


def replace_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it over ``path``.

    A reader sees the old file or the whole new one, never a partial write; the temporary file is
    removed when ``write`` fails.
    """
    # Not mkstemp: its files are private (0600); this one gets the usual permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


#: How a file being written by :func:`write_durable` ends its name (never ``.ckpt``: no glob takes it).
PARTIAL_SUFFIX = ".partial"
#: A partial file not modified for this long is left over from a process that died (any host).
_STALE_PARTIAL_S = 600.0


def write_durable(
    path: Path, write: Callable[[IO[bytes]], object], check: Callable[[Path], None] | None = None
) -> None:
    """Write ``path`` so that it survives ``kill -9``, a full disk and a power cut whole or not at all.

    ``write(f)`` fills a temporary file in ``path``'s own folder (so the rename below never becomes a
    copy across filesystems), which is flushed and ``fsync``-ed, checked by ``check(tmp)`` (which raises
    when the file is not what was meant), then renamed over ``path`` with ``os.replace``; the folder is
    ``fsync``-ed so that the rename itself is on disk. A failure at any point removes the temporary file
    and leaves the previous ``path`` as it was; a process killed mid-write leaves only the temporary
    file, which :func:`remove_stale_partials` removes later.

    Raises:
        OSError: what writing, syncing or renaming raised (``ENOSPC``, ``EIO``, ``EDQUOT``, ...).
    """
    tmp = path.with_name(
        f".{path.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}"
    )
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            if (written := f.tell()) != (on_disk := os.fstat(f.fileno()).st_size):
                raise OSError(errno.EIO, f"{written} bytes written but {on_disk} on disk")
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """``fsync`` a folder, so that a rename or removal in it survives a crash (where the filesystem can)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:  # some filesystems (a few network and FUSE ones) cannot sync a folder
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def remove_stale_partials(folder: Path) -> list[Path]:
    """Remove the temporary files that :func:`write_durable` left in ``folder`` when its process died.

    A file is stale when the process that wrote it (its name holds the host and the PID) is gone from
    this host, or when nothing wrote to it for :data:`_STALE_PARTIAL_S` (another host's). Returns the
    removed files.
    """
    removed = []
    ours = re.compile(
        rf"\..+\.{re.escape(socket.gethostname())}\.(\d+)\.[0-9a-f]{{8}}{re.escape(PARTIAL_SUFFIX)}"
    )
    for tmp in folder.glob(f".*{PARTIAL_SUFFIX}") if folder.is_dir() else ():
        try:
            here = ours.fullmatch(tmp.name)
            if (here and not _alive(int(here[1]))) or time.time() - tmp.stat().st_mtime > _STALE_PARTIAL_S:
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # removed meanwhile
            continue
    return removed


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# --------------------------------------------------------------------------- one process per run folder
#: The lock file of a run folder: held (``flock``) by the process writing into the folder.
LOCK_NAME = ".lock"


class RunLock:
    """An exclusive ``flock`` on ``run_dir/.lock``, held while one process writes into a run folder.

    The kernel releases it when the process ends, ``kill -9`` included, so a lock left by a dead
    process never blocks the next run: there is no stale lock to detect or remove. The file holds the
    holder's PID, host and start time for the message of a process refused. It is left in place after
    release (removing it would let two processes lock two different files of one name). On NFS, Linux
    turns ``flock`` into a POSIX lock the server knows of; Lustre needs its ``flock`` mount option.
    """

    def __init__(self, run_dir: Path, fd: int) -> None:
        self.run_dir, self._fd = run_dir, fd

    def release(self) -> None:
        """Let the next process have the folder (closing the file releases the lock)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_run(run_dir: Path) -> RunLock:
    """Take ``run_dir``'s lock without waiting, and write this process's PID, host and time into it.

    Raises:
        RunLockedError: another live process holds it; the message names its PID and host.
        OSError: the lock file cannot be created (the folder is read-only, removed, ...).
    """
    import fcntl  # POSIX only; imported here so that the rest of the module imports anywhere

    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 400).decode(errors="replace").split()
        os.close(fd)
        fields = dict(zip(holder[::2], holder[1::2], strict=False))
        who = f"process {fields.get('pid', '?')} on host {fields.get('host', '?')}"
        since = f", since {fields['started']}" if "started" in fields else ""
        raise RunLockedError(run_dir, who + since) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    os.write(fd, f"pid {os.getpid()} host {socket.gethostname()} started {started}\n".encode())
    return RunLock(run_dir, fd)


# --------------------------------------------------------------------------- a quiet Trainer
@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Only warnings and errors from Lightning's logger inside the block.

    For commands whose output is the result: the Trainer's start-up notes (GPU available, tips,
    CUDA_VISIBLE_DEVICES, Tensor Core advice) are logged at INFO while the Trainer is built and when
    it starts a run, so both need the block. The logger's level is restored on the way out.
    """
    logger = logging.getLogger(LIGHTNING_LOGGER)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            ignore_upstream_deprecations()
            yield
    finally:
        logger.setLevel(level)


#: Deprecation warnings that Lightning's own code raises under newer torch: not the user's business.
_UPSTREAM_DEPRECATIONS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)  # lightning 2.6.6, torch 2.14


def ignore_upstream_deprecations() -> None:
    """Filter :data:`_UPSTREAM_DEPRECATIONS` (in the current ``warnings.catch_warnings`` block, if any)."""
    for message in _UPSTREAM_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)


class _NoAdvertisements(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing ..." advertisements for its cloud products."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


_NO_ADVERTISEMENTS = _NoAdvertisements()


def one_line_warnings() -> None:
    """Show warnings in the terminal as ``warning: MESSAGE``: a command's warning is for its user, not Python's
    file, line number and source line (the process's whole ``warnings.formatwarning``: commands call it)."""
    warnings.formatwarning = _one_line


def _one_line(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    return f"warning: {message}\n"


def hide_advertisements() -> None:
    """Keep Lightning's advertisements out of the terminal (its other start-up notes stay)."""
    for name in (LIGHTNING_LOGGER, f"{LIGHTNING_LOGGER}.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _NO_ADVERTISEMENTS not in logger.filters:
            logger.addFilter(_NO_ADVERTISEMENTS)


def quiet_trainer(accelerator: str = "auto", precision: str = "32-true", **overrides: Any) -> L.Trainer:
    """A one-device Trainer that writes nothing: no logger, no checkpoints, no progress bar, no summary.

    Built inside :func:`quiet_lightning`; run its ``test``/``predict`` inside it too to keep the
    run's start-up notes out of the output.

    Args:
        accelerator: Lightning's accelerator name (``auto``, ``cpu``, ``gpu``, ...).
        precision: One of :data:`PRECISIONS`; the short forms are passed on as Lightning's names.
        **overrides: Any other ``L.Trainer`` argument (``callbacks``, ``devices``, ...).
    """
    settings: dict[str, Any] = {
        "accelerator": accelerator,
        "devices": 1,
        "precision": PRECISION_ALIASES.get(precision, precision),
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **overrides,
    }
    import lightning as L

    with quiet_lightning():
        return L.Trainer(**settings)
