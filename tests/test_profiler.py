"""``--profiler simple|advanced|pytorch``: Lightning's profilers, reporting into the run folder.

The end-of-run summary names the report; the PyTorch profiler's trace lands in ``version_N/profiler/``,
where TensorBoard's profiler plugin reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_mnist.cli.train import train_main


@pytest.mark.parametrize(
    ("profiler", "marker"),
    [
        ("simple", "run_training_epoch"),  # Lightning's actions, timed
        ("advanced", "function calls"),  # cProfile's statistics per action
    ],
)
def test_profiler_report_is_written_into_the_run_folder_and_named(
    profiler: str, marker: str, run_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_main([*run_args, "--max-epochs", "1", "--profiler", profiler]) == 0
    run = tmp_path / "logs" / "version_0"
    report = run / "fit-profile.txt"
    assert marker in report.read_text()
    assert (run / "test-profile.txt").is_file()  # testing the best checkpoint is profiled apart
    assert f"Profile:         {report}" in capsys.readouterr().out


def test_pytorch_profiler_writes_a_trace_for_tensorboard(
    run_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_main([*run_args, "--max-epochs", "1", "--profiler", "pytorch"]) == 0
    run = tmp_path / "logs" / "version_0"
    assert "Self CPU" in (run / "fit-profile.txt").read_text()  # the operator table
    traces = sorted((run / "profiler").glob("*.pt.trace.json"))
    assert traces, sorted(p.name for p in run.iterdir())
    events = json.loads(traces[0].read_text())["traceEvents"]
    assert any("aten::" in str(event.get("name", "")) for event in events)
    assert "trace for TensorBoard's profiler plugin in profiler/" in capsys.readouterr().out


def test_an_unknown_profiler_is_a_usage_error(
    run_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        train_main([*run_args, "--profiler", "fast"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--profiler" in err[0] and "simple" in err[0], err
