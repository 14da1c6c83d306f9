"""The command line: every invalid input exits 2 with one line; config files; help."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lit_mnist.cli.flags import parse_run, run_parser
from lit_mnist.cli.train import train_main
from lit_mnist.config import parse_devices
from lit_mnist.plan import check_machine

ROOT = Path(__file__).resolve().parents[1]


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        train_main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("train.py: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--lr", "-1"], "--lr must be > 0, got -1.0"),
        (["--lr", "abc"], "--lr expects a float or auto, got 'abc'"),
        (["--optimizer", "foo"], "--optimizer must be one of sgd, adam, adamw, rmsprop; got 'foo'"),
        (["--scheduler", "linear"], "--scheduler must be one of none, step, cosine, onecycle; got 'linear'"),
        (
            ["--devices", "0"],
            "--devices must be a positive count, -1 (all), a list of indices like 0,1, or auto; got 0",
        ),
        (["--devices", "two"], "--devices must be a positive count"),
        (
            ["--accelerator", "cpu", "--devices", "0,1"],
            "--devices 0,1 picks devices by index, which the CPU does not have; give a number of processes",
        ),
        (["--max-epochs", "-3"], "--max-epochs must be >= 1, got -3"),
        (["--precision", "7"], "--precision must be one of 32-true, 32, 16-mixed"),
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--hidden-sizes", "128", "-4"], "--hidden-sizes must be one or more positive integers"),
        (["--dropout", "1.5"], r"--dropout must be in [0, 1), got 1.5"),
        (["--momentum", "-1"], "--momentum must be >= 0, got -1.0"),
        (["--strategy", "magic"], "--strategy 'magic' is not known"),
        (["--num-nodes", "0"], "--num-nodes must be >= 1, got 0"),
        (
            ["--limit-train-batches", "1.5"],
            "--limit-train-batches must be a count >= 0 or a fraction in [0, 1]",
        ),
        (
            ["--ckpt-path", "missing.ckpt"],
            "--ckpt-path missing.ckpt: no such file; give a .ckpt file or 'last'",
        ),
        (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
        (["--config", "does-not-exist.yaml"], "--config: File does not exist"),
    ],
)
def test_invalid_flags_exit_2_with_one_line(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert expected in _usage_error([*argv, "--log-dir", str(tmp_path)], capsys)


def test_num_nodes_without_a_multi_machine_launcher(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--num-nodes 2 started by hand on one machine would wait for ever for the other machine's processes."""
    for name in list(os.environ):
        if name.startswith(("SLURM_", "LSB_", "TORCHELASTIC_", "OMPI_", "PMI_")) or name in (
            "MASTER_ADDR", "NODE_RANK", "RANK", "GROUP_RANK", "LOCAL_RANK", "WORLD_SIZE"
        ):  # fmt: skip
            monkeypatch.delenv(name)
    line = _usage_error(["--num-nodes", "2", "--log-dir", str(tmp_path)], capsys)
    assert "--num-nodes 2 joins processes on 2 machines, and this process was not started by torchrun" in line
    assert "leave --num-nodes at 1 on one machine" in line
    # by hand, the way Lightning documents it: MASTER_ADDR and NODE_RANK on each machine
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("NODE_RANK", "1")
    check_machine(parse_run(["--num-nodes", "2", "--log-dir", str(tmp_path)]))  # accepted


def test_gpu_on_a_machine_without_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    line = _usage_error(["--accelerator", "gpu"], capsys)
    assert "--accelerator gpu: no CUDA GPU is visible on this machine" in line
    line = _usage_error(["--precision", "16-mixed"], capsys)
    assert "--precision 16-mixed (float16 autocast) needs a CUDA GPU" in line
    assert "bf16-mixed" in line


def test_resume_last_without_a_run(capsys: pytest.CaptureFixture[str], run_args: list[str]) -> None:
    line = _usage_error([*run_args, "--ckpt-path", "last"], capsys)
    assert "--ckpt-path last: no " in line and "last.ckpt to resume from" in line


#: A 0.5 KB config whose aliases expand to 10**9 strings (a "billion laughs"): refused, not expanded.
BILLION_LAUGHS = (
    "x0: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(f"x{i}: &{chr(97 + i)} [{', '.join([f'*{chr(96 + i)}'] * 10)}]\n" for i in range(1, 9))
    + "seed: *i\n"
)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("max_epochs: 3\nfoo: 1\n", "unknown key 'foo'"),
        ("max_epochs: [\n", "not valid YAML"),
        ("- 1\n- 2\n", "must be a YAML mapping of flag names to values"),
        ("lr: fast\n", "--lr expects a float or auto, got 'fast'"),
        ("max_epochs: 0\n", ": max_epochs must be >= 1, got 0"),  # after --config PATH, the value's source
        (
            "max_epochs: null\n",
            "--max-epochs cannot be null (a config file's 'max_epochs: null'); give a value, e.g. 10",
        ),
        ("lr: null\n", "--lr cannot be null"),
        ("log_dir: null\n", "--log-dir cannot be null"),
        ("gradient_clip_val: null\nmax_time: null\n", None),  # null is their default: accepted
        (BILLION_LAUGHS, "YAML aliases (*a, line 2) are not accepted in a config file; write the values out"),
        ("lr: 0.1\nmax_epochs: 2\nlr: 0.2\n", "duplicate key 'lr' (line 3); keep one"),
    ],
)
def test_bad_config_files(
    content: str, expected: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    if expected is None:
        assert parse_run(["--config", str(path)]).gradient_clip_val is None
        return
    line = _usage_error(["--config", str(path)], capsys)
    assert expected in line
    if "key" in expected or "YAML" in expected or expected.startswith(":"):
        assert f"--config {path}" in line


def test_config_keys_are_flag_names_and_flags_override(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("lr: 0.5\nmax-epochs: 4\nhidden_sizes: [32, 16]\noptimizer: adam\n")
    cfg = parse_run(["--config", str(path), "--lr", "0.1"])
    assert cfg.lr == 0.1  # the flag after --config wins
    assert cfg.max_epochs == 4
    assert cfg.hidden_sizes == (32, 16)
    assert cfg.optimizer == "adam"


def test_defaults_are_the_classic_recipe() -> None:
    cfg = parse_run([])
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.batch_size, cfg.max_epochs) == ("sgd", 0.01, 0.9, 64, 10)
    assert cfg.hidden_sizes == (128, 64)
    assert cfg.dropout == 0.0
    assert cfg.devices == "auto"


def test_devices_forms(tmp_path: Path) -> None:
    assert parse_devices(parse_run(["--devices", "2"]).devices) == 2
    for text, devices in (("devices: 1\n", 1), ("devices: '0,1'\n", [0, 1]), ("devices: auto\n", "auto")):
        (config := tmp_path / "run.yaml").write_text(text)  # YAML reads 1 as a number: taken as such
        assert parse_devices(parse_run(["--config", str(config)]).devices) == devices, text
    assert parse_devices("-1") == -1
    assert parse_devices("0,1") == [0, 1]
    assert parse_devices("auto") == "auto"


def test_help_is_grouped() -> None:
    text = run_parser().format_help()
    for group in ("Data:", "Model:", "Optimization:", "Trainer:", "Checkpoints and logs:"):
        assert group in text
    for flag in (
        "--accelerator", "--devices", "--strategy", "--num-nodes", "--precision", "--max-epochs", "--batch-size",
        "--optimizer", "--lr", "--momentum", "--weight-decay", "--scheduler", "--hidden-sizes", "--dropout",
        "--data-dir", "--seed", "--ckpt-path", "--fast-dev-run", "--config",
    ):  # fmt: skip
        assert flag in text


def test_script_reports_usage_errors_without_traceback() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), "--optimizer", "foo"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "train.py: error: --optimizer must be one of sgd, adam, adamw, rmsprop; got 'foo'"
    )
    assert "Traceback" not in result.stderr


def test_saved_config_is_loadable(run_args: list[str], tmp_path: Path) -> None:
    assert train_main([*run_args, "--fast-dev-run", "--seed", "3"]) == 0
    (config,) = (tmp_path / "logs").glob("version_*/config.yaml")
    saved = yaml.safe_load(config.read_text())
    assert saved["seed"] == 3
    assert parse_run(["--config", str(config)]).seed == 3


def test_library_modules_do_not_import_the_command_line() -> None:
    """Imports run one way: lit_mnist.cli uses the library, the library never imports lit_mnist.cli."""
    code = (
        "import sys, lit_mnist.inference, lit_mnist.checkpoints, lit_mnist.images, lit_mnist.export, "
        "lit_mnist.runtime; print(sorted(m for m in sys.modules if m.startswith('lit_mnist.cli')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_config_file_with_aliases_is_refused_in_every_spelling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (path := tmp_path / "laughs.yaml").write_text(BILLION_LAUGHS)
    for argv in (["--config", str(path)], [f"--config={path}"], ["--max-epochs", "2", "--config", str(path)]):
        line = _usage_error(argv, capsys)
        assert f"--config {path}: YAML aliases (*" in line, argv


def test_a_binary_config_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.ckpt.yaml"
    path.write_bytes(bytes(range(128, 256)) * 8)
    line = _usage_error(["--config", str(path)], capsys)
    assert "--config must be a YAML text file" in line


def test_a_log_dir_that_is_a_file_is_one_line(
    run_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (afile := tmp_path / "afile").write_text("not a folder")
    line = _usage_error([*run_args, "--log-dir", str(afile)], capsys)
    assert f"--log-dir {afile} is a file, not a folder" in line
    line = _usage_error([*run_args, "--log-dir", str(afile / "runs")], capsys)
    assert f"--log-dir {afile / 'runs'}: cannot create a run folder there" in line
    assert afile.read_text() == "not a folder"
