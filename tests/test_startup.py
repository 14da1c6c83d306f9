"""lit_mnist.startup: the garbage collector off for the scripts' imports, frozen objects before the exit."""

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lit_mnist.startup import exit_code, quiet_gc_imports

ROOT = Path(__file__).resolve().parents[1]


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


def test_exit_code_freezes_and_returns_the_code() -> None:
    gc.unfreeze()
    kept = [[i] for i in range(100)]
    assert exit_code(3) == 3 and exit_code(None) is None
    assert gc.get_freeze_count() >= len(kept)


def test_train_py_runs_and_exits_through_it(tiny_data: Path, tmp_path: Path) -> None:
    """scripts/train.py as a user runs it, in a process of its own: trains, tests, exits 0 after exit_code."""
    from tests.conftest import shrunk_args

    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *shrunk_args(tiny_data, tmp_path / "logs", 1)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Test accuracy:" in done.stdout
    assert (tmp_path / "logs" / "version_0" / "results.json").is_file()


@pytest.mark.parametrize("script", ["evaluate", "predict", "export", "sweep"])
def test_the_other_scripts_import_through_it(script: str) -> None:
    """``--help`` of the other scripts, each in a process of its own (their imports under quiet_gc_imports)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / f"{script}.py"), "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
