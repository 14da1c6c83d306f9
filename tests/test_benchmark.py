"""scripts/benchmark.py as a user runs it: a subprocess on the tiny dataset, a few batches per epoch."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def run_benchmark(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The benchmark in a session of its own: on a timeout its case processes are killed with it."""
    with subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_every_case_and_ratio_is_reported(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = run_benchmark(
        "--data-dir", str(tiny_data),
        "--val-size", "100",
        "--device", "cpu",
        "--repeats", "1",
        "--limit-batches", "2",
        "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())

    assert list(report["cases"]) == ["a", "b", "c", "c1", "d", "e", "f", "g"]  # the table's order
    # the fast path takes the group size train.py would (gcd of 10, 8 steps per epoch and the 2-batch limit)
    assert report["cases"]["c"]["steps_per_batch"] == report["cases"]["e"]["steps_per_batch"] == 2
    assert report["cases"]["c1"]["steps_per_batch"] == report["cases"]["d"]["steps_per_batch"] == 1
    for case, result in report["cases"].items():
        assert len(result["epoch_s"]) == 1, case
        for key in ("median_s", "samples_per_s", "peak_rss_mib"):
            assert result[key] > 0, (case, key, result[key])
        # 500 training images (600 - 100 held out); two batches of 64, or all of them at 2048
        assert result["samples_per_epoch"] == (128 if result["batch_size"] == 64 else 500), case
    floor = report["cases"]["d"]["floor"]
    assert floor["flops_per_sample"] == 454_400 and floor["forward_flops_per_sample"] == 218_368
    assert floor["floor_s"] > 0 and floor["gemm_gflops"] > 0
    for plain, three_forward in zip(floor["epoch_floor_s"], floor["epoch_floor_3x_forward_s"], strict=True):
        assert abs(three_forward / plain - 655_104 / 454_400) < 1e-9
    d_epoch, floor_epoch = report["cases"]["d"]["epoch_s"][0], floor["epoch_floor_s"][0]
    assert report["ratios"]["d/floor"]["value"] == d_epoch / floor_epoch  # each epoch with its own rate

    targeted = {"c/b", "a/c", "d/floor", "d/floor3f", "rss c/b", "f/e"}
    assert set(report["ratios"]) == targeted | {"c1/b", "d/g", "g/floor"}
    for name, ratio in report["ratios"].items():
        assert ratio["value"] > 0, name
        if name in targeted:
            assert ratio["target"].startswith(("<=", ">=")) and isinstance(ratio["met"], bool), name
        else:
            assert ratio["target"] is None and ratio["met"] is None, name
    for name in report["ratios"]:
        assert name in proc.stdout  # the printed table has the ratios too


def test_usage_errors_are_one_line_with_status_2(tiny_data: Path, tmp_path: Path) -> None:
    for args, expected in (
        (["--data-dir", str(tmp_path / "nowhere")], "--data-dir"),
        (["--data-dir", str(tiny_data), "--cases", "a,x"], "--cases"),
        (["--data-dir", str(tiny_data), "--repeats", "0"], "--repeats must be >= 1"),
        (["--device", "tpu"], "--device"),
        (["--augment", "--start-up"], "--augment and --start-up are separate runs; give one of them"),
        (
            ["--channels-last", "--time-to-accuracy"],
            "--channels-last and --time-to-accuracy are separate runs",
        ),
        (
            ["--data-dir", str(tiny_data), "--train-flags", "--seed 1"],
            "--train-flags is for --time-to-accuracy's table; give both",
        ),
        (
            ["--data-dir", str(tiny_data), "--time-to-accuracy", "--train-flags", "--log-dir /tmp/x"],
            "--train-flags: --log-dir is set by the benchmark itself",
        ),
        (  # a shortened flag is read as train.py's parser reads it
            ["--data-dir", str(tiny_data), "--time-to-accuracy", "--train-flags", "--data-d /tmp/x"],
            "--train-flags: --data-dir is set by the benchmark itself",
        ),
        (  # one flag without a space is still the value of --train-flags
            ["--data-dir", str(tiny_data), "--time-to-accuracy", "--train-flags", "--compile"],
            "--train-flags: --compile: use the benchmark's --with-compile",
        ),
        (
            ["--data-dir", str(tiny_data), "--time-to-accuracy", "--train-flags", "--ema 0.99"],
            "--train-flags: --ema changes what the plain loop cannot follow",
        ),
        (
            ["--data-dir", str(tiny_data), "--time-to-accuracy", "--train-flags", "--lr=auto"],
            "--train-flags: --lr auto: the plain loop has no finder",
        ),
        (
            [
                "--data-dir",
                str(tiny_data),
                "--time-to-accuracy",
                "--recipes",
                "cnn-fast",
                "--train-flags",
                "--max-epochs x",
            ],
            "--train-flags '--max-epochs x' with --recipe cnn-fast: --max-epochs expects an int, got 'x'",
        ),
        (
            ["--data-dir", str(tiny_data), "--time-to-accuracy", "--train-flags", "--seed '1"],
            "No closing quotation; quote it as one string",
        ),
    ):
        proc = run_benchmark(*args, timeout=300)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (args, proc.stderr)


def test_ratios_pair_epochs_that_ran_in_turn(tiny_data: Path, tmp_path: Path) -> None:
    """Each case in its own process, one epoch at a time: b c, then c b, ...; a ratio is the median
    of its per-epoch pairs over all rounds."""
    out = tmp_path / "bench.json"
    proc = run_benchmark(
        "--data-dir", str(tiny_data),
        "--val-size", "100",
        "--device", "cpu",
        "--cases", "b,c",
        "--repeats", "2",
        "--rounds", "2",
        "--limit-batches", "2",
        "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["settings"]["rounds"] == 2
    b, c = report["cases"]["b"], report["cases"]["c"]
    assert len(b["epoch_s"]) == len(c["epoch_s"]) == 4  # two timed epochs per round, pooled
    pairs = [tc / tb for tb, tc in zip(b["epoch_s"], c["epoch_s"], strict=True)]
    ratio = report["ratios"]["c/b"]
    assert ratio["pairs"] == pairs
    assert ratio["value"] == (sorted(pairs)[1] + sorted(pairs)[2]) / 2
    assert "median of the paired epochs" in proc.stdout

    # the turns (warm-up included) never overlap, and alternate: b c | c b | b c in each round
    for round_index in range(2):
        turns = [
            (start, end, case)
            for case in "bc"
            for start, end in report["cases"][case]["turns"][3 * round_index : 3 * round_index + 3]
        ]
        turns.sort()
        assert [case for _, _, case in turns] == list("bccbbc")
        for (_, end, _), (start, _, _) in itertools.pairwise(turns):
            assert end <= start


def test_a_failing_case_ends_the_run_with_one_line_and_status_1(tiny_data: Path) -> None:
    """A case whose process raises: the other processes are stopped, the error is one line."""
    proc = run_benchmark(
        "--data-dir", str(tiny_data),
        "--val-size", "600",  # all 600 training images held out: (b) cannot build a train split
        "--device", "cpu",
        "--cases", "b,c",
        "--repeats", "1",
        "--limit-batches", "2",
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    # whichever case sets up first fails first: (b) in the benchmark's words, (c) in the datamodule's
    assert re.fullmatch(
        r"benchmark\.py: error: case \((b|c)\) failed: (--val-size|val_size) must be smaller than the 600 "
        r"training images, got 600",
        last,
    ), last


def test_time_to_accuracy_runs_each_recipe_three_ways_and_checks_its_target(
    tiny_data: Path, tmp_path: Path
) -> None:
    """--time-to-accuracy on the tiny set (--train-flags shrink the recipes): every row, the ratios, the
    verdicts against each recipe's target, the JSON; the train.py runs' accuracy is their results.json's."""
    out = tmp_path / "tta.json"
    flags = "--val-size 100 --max-epochs 1 --accelerator cpu --devices 1"
    proc = run_benchmark(
        "--data-dir", str(tiny_data),
        "--time-to-accuracy",
        "--recipes", "classic,cnn-fast",
        "--train-flags", flags,
        "--repeats", "1",
        "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["train_flags"] == flags.split()
    table = report["table"]
    assert list(table) == [
        "seed's classic loop (10 epochs)",
        "classic: lit_mnist train.py",
        "classic: plain PyTorch loop",
        "cnn-fast: lit_mnist train.py",
        "cnn-fast: plain PyTorch loop",
    ]
    for key, row in table.items():
        assert row["wall_s"] > 0 and 0 < row["test_acc"] <= 1, key
        assert key in proc.stdout, key
    for name in ("classic", "cnn-fast"):
        ours, plain = table[f"{name}: lit_mnist train.py"], table[f"{name}: plain PyTorch loop"]
        assert f"{name}: lit_mnist / plain wall time {ours['wall_s'] / plain['wall_s']:.2f}" in proc.stdout
    assert report["targets"]["classic"]["met"] is None
    assert "classic: no target to check (the seed's 97.5%); lit_mnist train.py reached" in proc.stdout
    fast = table["cnn-fast: lit_mnist train.py"]
    met = fast["test_acc"] >= 0.99 and fast["wall_s"] <= 15
    assert report["targets"]["cnn-fast"] == {
        "target": ">= 99.0% in <= 15 s",
        "min_test_acc": 0.99,
        "max_wall_s": 15.0,
        "max_epochs": None,
        "met": met,
    }
    reached = f"{fast['test_acc'] * 100:.2f}% in {fast['wall_s']:.1f} s, with {flags}"
    verdict = "met" if met else "MISSED"
    assert (
        f"cnn-fast: target >= 99.0% in <= 15 s {verdict}: lit_mnist train.py reached {reached}" in proc.stdout
    )


def test_the_plain_loop_reads_only_the_settings_train_flags_may_change() -> None:
    """--train-flags lets through the settings in PLAIN_LOOP_KEYS: they must be all plain_main reads
    of its RunConfig, and every key named there a setting of a run."""
    import dataclasses
    import inspect

    from lit_mnist.config import RunConfig

    sys.path.insert(0, str(SCRIPT.parent))
    import time_to_accuracy

    read = set(re.findall(r"\bcfg\.(\w+)", inspect.getsource(time_to_accuracy.plain_main)))
    assert read and read <= time_to_accuracy.PLAIN_LOOP_KEYS, read - time_to_accuracy.PLAIN_LOOP_KEYS
    named = (
        time_to_accuracy.PLAIN_LOOP_KEYS
        | time_to_accuracy.NOT_TRAINING_KEYS
        | time_to_accuracy.BENCHMARK_KEYS
    )
    assert named <= {f.name for f in dataclasses.fields(RunConfig)}


def test_start_up_times_both_ways_of_importing_in_fresh_processes(tiny_data: Path, tmp_path: Path) -> None:
    """--start-up: train.py's imports with lit_mnist.startup and without, one pair; both rows, the ratio, the JSON;
    with --against, whole processes of train.py --help and of a 1-epoch run, of this tree and of another
    checkout (here the same one), in turn."""
    out = tmp_path / "start.json"
    root = SCRIPT.parents[1]
    flags = "--val-size 100 --batch-size 32 --accelerator cpu --devices 1"
    proc = run_benchmark(
        "--start-up", "--repeats", "1", "--json", str(out),
        "--against", str(root), "--data-dir", str(tiny_data), "--train-flags", flags,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "start-up of scripts/train.py: 1 pairs, medians" in proc.stdout
    rows = {line.split("  ")[0]: line.split()[-3:] for line in proc.stdout.splitlines() if "  " in line}
    for name in ("with lit_mnist.startup", "plain imports"):
        imports, process, exit_s = (float(v) for v in rows[name])
        assert 0 < imports < process
        assert abs(exit_s - (process - imports)) <= 0.011  # the columns as printed, to 2 decimals
    report = json.loads(out.read_text())
    assert set(report["times"]) == {"with lit_mnist.startup", "plain imports"}
    assert re.search(r"plain / with lit_mnist.startup, whole process: \d+\.\d\d", proc.stdout)
    times = report["times"]
    pair = times["plain imports"]["process"][0] / times["with lit_mnist.startup"]["process"][0]
    assert report["ratio"] == pytest.approx(pair)  # one pair: its ratio is the median
    commands = report["commands"]
    assert commands["against"] == [str(root)] and commands["train_flags"] == flags.split()
    assert set(commands["times"]) == {"train.py --help", "train.py --max-epochs 1"}
    lines = proc.stdout.splitlines()
    for name, times in commands["times"].items():
        assert set(times) == {"this tree", str(root)}, name
        this, other = times["this tree"][0], times[str(root)][0]
        assert this > 0 and other > 0, name
        assert commands["ratios"][name] == {str(root): pytest.approx(other / this)}  # one round: its ratio
        row = lines.index(next(line for line in lines if line.startswith(name)))  # the wall times first
        assert lines[row].split()[-2:] == [f"{this:.2f}", f"{other:.2f}"], lines[row]
        assert lines[row + 1].split() == ["/", "this", "tree", f"{other / this:.2f}"], lines[row + 1]
        cpu_this, cpu_other = (commands["cpu_times"][name][tree][0] for tree in ("this tree", str(root)))
        assert cpu_this > 0 and cpu_other > 0, name
        assert commands["cpu_ratios"][name] == {str(root): pytest.approx(cpu_other / cpu_this)}
    bad = run_benchmark("--start-up", "--repeats", "0", timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == "benchmark.py: error: --repeats must be >= 1, got 0"
    for args, expected in (
        (["--start-up", "--against", str(tmp_path)], f"--against {tmp_path}: no scripts/train.py in it"),
        (["--against", str(root), "--data-dir", str(tiny_data)], "--against is for --start-up; give both"),
    ):
        bad = run_benchmark(*args, timeout=60)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, (args, bad.stderr)
        assert expected in bad.stderr, (args, bad.stderr)


def test_channels_last_times_both_layouts_of_both_cnns() -> None:
    proc = run_benchmark("--channels-last", "--repeats", "1", "--device", "cpu", timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {line[:28].strip(): line[28:].split() for line in proc.stdout.splitlines() if line.endswith("x")}
    assert set(rows) == {"default CNN, batch 128", "cnn-fast's CNN, batch 256"}
    for contiguous, _, channels_last, _, ratio in rows.values():
        plain, fast = float(contiguous.replace(",", "")), float(channels_last.replace(",", ""))
        assert plain > 0 and fast > 0
        assert float(ratio[:-1]) == pytest.approx(fast / plain, abs=0.01)


def test_augment_times_each_augmentation_against_lit_mnists() -> None:
    proc = run_benchmark("--augment", "--repeats", "1", "--device", "cpu", timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {
        line[:50].strip(): line[50:].split()
        for line in proc.stdout.splitlines()
        if line.rstrip().endswith("x lit_mnist's")
    }
    assert rows["lit_mnist RandomAffine (per sample)"][2] == "1.00x"
    assert "torchvision v2 RandomAffine (one draw per batch)" in rows
    try:
        import kornia  # noqa: F401
    except ImportError:
        assert "kornia is not installed (pip install kornia): its row is left out" in proc.stdout
    else:
        assert "kornia RandomAffine (per sample)" in rows
    assert all(float(ms) > 0 for ms, _, *_ in rows.values())


def test_side_by_side_times_one_run_alone_and_two_at_once(tiny_data: Path) -> None:
    proc = run_benchmark(
        "--side-by-side", "--repeats", "1", "--data-dir", str(tiny_data), "--val-size", "100", timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    rows = {line[:16].strip(): line[16:].split() for line in proc.stdout.splitlines()}
    for case, runs in (("alone", "1"), ("two, default", "2"), ("two, shares", "2")):
        assert rows[case][0] == runs, proc.stdout
        assert float(rows[case][1]) > 0 and float(rows[case][2]) > 0, proc.stdout  # wall and CPU seconds
    assert re.search(r"default / shares: wall \d+\.\d\dx, CPU \d+\.\d\dx", proc.stdout), proc.stdout
    bad = run_benchmark("--busy", "2", "--data-dir", str(tiny_data), timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == "benchmark.py: error: --busy is for --side-by-side; give both"
