"""Start-up: the garbage collector off for the scripts' imports, frozen objects before the exit (lit_mnist.startup),
and a command that imports only what it uses."""

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lit_mnist.startup import exit_code, quiet_gc_first_imports, quiet_gc_imports

ROOT = Path(__file__).resolve().parents[1]
#: Imported only when a run asks for them: --logger mlflow / wandb, sweeps, export.
ON_REQUEST = ("mlflow", "wandb", "optuna", "onnx", "onnxruntime")


def imported(stderr: str) -> set[str]:
    """The modules ``python -X importtime`` reported importing (its lines on stderr)."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def other_lines(stderr: str) -> str:
    """``stderr`` without ``-X importtime``'s lines."""
    return "\n".join(line for line in stderr.splitlines() if not line.startswith("import time:"))


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    (gc.enable if enabled else gc.disable)()


def test_imports_run_without_the_collector_and_what_they_made_is_frozen() -> None:
    gc.enable()
    gc.unfreeze()
    with quiet_gc_imports():
        assert not gc.isenabled()
        made = [[i] for i in range(1000)]  # what an import leaves: long-lived objects the collector tracks
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(made)


def test_a_collector_turned_off_by_the_caller_stays_off() -> None:
    gc.disable()
    with quiet_gc_imports():
        pass
    assert not gc.isenabled()


def test_the_collector_comes_back_when_an_import_fails() -> None:
    gc.enable()
    with pytest.raises(ImportError), quiet_gc_imports():
        import lit_mnist.no_such_module  # noqa: F401
    assert gc.isenabled()


def test_first_imports_of_torch_run_without_the_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a process that has not imported torch (here: as if), the block runs as under quiet_gc_imports."""
    gc.enable()
    gc.unfreeze()
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    with quiet_gc_first_imports():
        assert not gc.isenabled()
        made = [[i] for i in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(made)


def test_a_process_with_torch_keeps_its_collector_and_freezes_nothing() -> None:
    """A test or a notebook calling a command's main: nothing of it is frozen."""
    import torch  # noqa: F401

    gc.enable()
    gc.unfreeze()
    with quiet_gc_first_imports():
        assert gc.isenabled()
        [[i] for i in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_exit_code_freezes_and_returns_the_code() -> None:
    gc.unfreeze()
    kept = [[i] for i in range(100)]
    assert exit_code(3) == 3 and exit_code(None) is None
    assert gc.get_freeze_count() >= len(kept)


def test_train_py_runs_and_exits_through_it(tiny_data: Path, tmp_path: Path) -> None:
    """scripts/train.py as a user runs it, in a process of its own: trains, tests, exits 0 after exit_code."""
    from tests.conftest import shrunk_args

    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "scripts" / "train.py"),
         *shrunk_args(tiny_data, tmp_path / "logs", 1)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, other_lines(done.stderr)[-2000:]
    assert "Test accuracy:" in done.stdout
    assert (tmp_path / "logs" / "version_0" / "results.json").is_file()
    modules = imported(done.stderr)
    assert {"torch", "lightning", "tensorboard"} <= modules  # the run and its default loggers
    assert not modules & set(ON_REQUEST), sorted(modules & set(ON_REQUEST))


@pytest.mark.parametrize("args", [["--help"], ["--lr", "fast"]], ids=["help", "usage-error"])
def test_train_py_help_and_usage_errors_import_no_torch(args: list[str]) -> None:
    """``--help`` and a usage error found while parsing end before torch and Lightning are imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "scripts" / "train.py"), *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == (0 if args == ["--help"] else 2), other_lines(done.stderr)[-2000:]
    assert "usage:" in done.stdout if args == ["--help"] else "--lr" in other_lines(done.stderr)
    heavy = imported(done.stderr) & {"torch", "lightning", "matplotlib", *ON_REQUEST}
    assert not heavy, sorted(heavy)


@pytest.mark.parametrize("script", ["evaluate", "predict", "export", "sweep"])
def test_the_other_scripts_import_through_it(script: str) -> None:
    """``--help`` of the other scripts, each in a process of its own (their imports under quiet_gc_imports)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / f"{script}.py"), "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
