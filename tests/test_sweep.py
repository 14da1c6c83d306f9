"""lit-mnist sweep: Optuna trials that are ordinary train runs, shared studies, resume, pruning, bad input.

Each trial trains one or two epochs on the tiny dataset. Workers that must be separate processes (two
at once on one study, a worker killed with SIGKILL) run ``scripts/sweep.py``; the rest runs in-process.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna", reason='the sweep extra is not installed: pip install -e ".[sweep]"')

from lit_mnist.cli import main as lit_mnist_main  # noqa: E402
from lit_mnist.cli.sweep import sweep_main  # noqa: E402
from lit_mnist.cli.train import train_main  # noqa: E402
from lit_mnist.sweeps.study import ATTR_SPACE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "sweep.yaml"
PNG = b"\x89PNG\r\n\x1a\n"
#: The PostgreSQL URL scheme the README and --storage's help show, and the tests' server uses.
PG_SCHEME = "postgresql+psycopg2"


def trial_flags(data_dir: Path, log_dir: Path, max_epochs: int = 1) -> list[str]:
    """train.py flags that shrink every trial (the command line overrides the space file's fixed flags)."""
    return [
        "--data-dir", str(data_dir),
        "--val-size", "100",
        "--batch-size", "32",
        "--accelerator", "cpu",
        "--max-epochs", str(max_epochs),
        "--log-every-n-steps", "5",
        "--log-dir", str(log_dir),
    ]  # fmt: skip


def write_space(path: Path, space: dict, fixed: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump({"space": space, **({"fixed": fixed} if fixed else {})}))
    return path


def load(log_dir: Path, name: str, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage or f"sqlite:///{log_dir / 'sweeps.db'}")


def worker(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``scripts/sweep.py ARGS`` in a process of its own (its own group), output to ``log``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's lit_mnist, whatever is installed
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "sweep.py"), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def finish(process: subprocess.Popen[bytes], log: Path, timeout: float = 400) -> None:
    try:
        status = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"a sweep worker ran past {timeout} s; its output ends:\n{log.read_text()[-3000:]}")
    assert status == 0, log.read_text()[-3000:]


# --------------------------------------------------------------------------- a sweep end to end
def test_sweep_end_to_end_table_best_config_plots(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``lit-mnist sweep --space examples/sweep.yaml`` on tiny data: trials are runs, a table, a best
    config that --config repeats, PNGs.

    val/loss, not the default val/acc: on the tiny dataset most trials reach a val/acc of 1, and the
    importance plot needs trials that differ.
    """
    logs = tmp_path / "logs"
    args = [
        "sweep",
        "--space",
        str(EXAMPLE),
        "--trials",
        "3",
        "--metric",
        "val/loss",
        *trial_flags(tiny_data, logs),
    ]
    assert lit_mnist_main(args) == 0
    out = capsys.readouterr().out

    study = load(logs, "sweep")  # the default study name: the space file's
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert set(trials[0].params) == {"lr", "momentum", "hidden_sizes"}
    for t in trials:  # every trial is an ordinary run with the sampled flags and the fixed ones
        run = Path(t.user_attrs["run_dir"])
        assert (run / "results.json").is_file() and list(run.glob("events.out.tfevents.*"))
        assert list((run / "checkpoints").glob("*.ckpt"))
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["lr"] == pytest.approx(t.params["lr"])
        assert config["hidden_sizes"] == json.loads(t.params["hidden_sizes"])
        assert config["optimizer"] == "sgd"  # fixed: in the space file
        assert config["max_epochs"] == 1  # the command line overrides the file's max_epochs: 5

    header = next(line for line in out.splitlines() if line.startswith("trial  state"))
    assert header.split()[:6] == ["trial", "state", "val/loss", "lr", "momentum", "hidden_sizes"]
    rows = [line.split() for line in out.splitlines() if line.split()[:2][1:] == ["complete"]]
    values = [float(row[2]) for row in rows]
    assert len(rows) == 3 and values == sorted(values)  # best (lowest) first

    folder = logs / "sweeps" / "sweep"
    for name in ("history.png", "importance.png"):
        assert (folder / name).read_bytes()[:8] == PNG
    assert (folder / "trials.csv").read_text().splitlines()[0].startswith("trial,state,val/loss,lr")
    best = study.best_trial
    assert f"Best checkpoint: {best.user_attrs['best_checkpoint']}" in out
    assert Path(best.user_attrs["best_checkpoint"]).is_file()

    # the best config repeats the best trial: the same flags, the same weights, the same results
    assert train_main(["--config", str(folder / "best.yaml")]) == 0
    repeat = json.loads((logs / "version_3" / "results.json").read_text())
    original = json.loads((Path(best.user_attrs["run_dir"]) / "results.json").read_text())
    for key in ("val_acc_best", "test_acc", "test_loss"):
        assert repeat[key] == pytest.approx(original[key], abs=1e-6), key

    # --report shows the same table again, running nothing
    capsys.readouterr()
    assert lit_mnist_main(["sweep", "--study", "sweep", "--report", "--log-dir", str(logs)]) == 0
    again = capsys.readouterr().out
    assert header in again and "Best config:" in again
    assert len(load(logs, "sweep").get_trials()) == 3


# --------------------------------------------------------------------------- workers sharing a study
def test_two_workers_share_a_study(tiny_data: Path, tmp_path: Path) -> None:
    """Two processes run the same command on the default SQLite storage: N trials between them, no duplicates."""
    logs = tmp_path / "logs"
    space = write_space(tmp_path / "lr.yaml", {"lr": {"low": 0.01, "high": 0.2, "log": True}})
    args = ["--space", str(space), "--trials", "4", "--sampler", "random", *trial_flags(tiny_data, logs)]
    logs_out = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [worker(args, log) for log in logs_out]
    for process, log in zip(workers, logs_out, strict=True):
        finish(process, log)

    trials = load(logs, "lr").get_trials()
    numbers = sorted(t.number for t in trials)
    # MaxTrialsCallback stops each worker once the study holds 4 trials; two workers that start a trial
    # at the same moment may together run one more (Optuna documents no lock between them)
    assert numbers == list(range(len(trials))) and 4 <= len(trials) <= 5
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers ran trials
    assert len({t.user_attrs["run_dir"] for t in trials}) == len(trials)


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    initdb = found[-1] if found else shutil.which("initdb")
    if not initdb:
        pytest.skip("PostgreSQL's server binaries are not installed (Debian: apt-get install postgresql)")
    return Path(initdb).parent


@contextlib.contextmanager
def postgres_server(log: Path) -> Iterator[str]:
    """A PostgreSQL server on a free loopback port in a temporary folder; its URL. Stopped and removed after.

    As root, initdb and postgres (which refuse root) run as the ``postgres`` user (else ``nobody``).
    """
    psycopg2 = pytest.importorskip("psycopg2", reason='psycopg2 is not installed: pip install -e ".[sweep]"')
    bindir = _postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="lit-mnist-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root and no runuser to start PostgreSQL as another user")
        user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        if user is None:
            pytest.skip("running as root and no postgres or nobody user to start PostgreSQL as")
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        prefix = [runuser, "-u", user, "--"]
    server = None
    try:
        data = folder / "data"
        init = subprocess.run(
            [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "lit", "-A", "trust", "--no-sync"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if init.returncode != 0:
            pytest.skip(f"initdb failed, PostgreSQL cannot start here: {init.stderr.strip()[-500:]}")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        with open(log, "wb") as out:
            server = subprocess.Popen(
                [*prefix, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
                 "-k", str(folder), "-c", "fsync=off"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg2.connect(host="127.0.0.1", port=port, user="lit", dbname="postgres").close()
                break
            except psycopg2.OperationalError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.skip(f"PostgreSQL did not start: {log.read_text(errors='replace')[-1000:]}")
                time.sleep(0.25)
        yield f"{PG_SCHEME}://lit@127.0.0.1:{port}/postgres"
    finally:
        if server is not None:
            for sig in (signal.SIGINT, signal.SIGKILL):  # SIGINT: PostgreSQL's fast shutdown
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.pid, sig)
                try:
                    server.wait(timeout=30)
                    break
                except subprocess.TimeoutExpired:
                    continue
        shutil.rmtree(folder, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_two_workers_share_a_study_on_postgresql(tiny_data: Path, tmp_path: Path) -> None:
    """A real PostgreSQL server holds the study; two workers started at once create and share it."""
    with postgres_server(tmp_path / "postgres.log") as url:
        space = write_space(tmp_path / "pg.yaml", {"lr": [0.02, 0.05, 0.1]})
        logs = [tmp_path / f"machine{i}" for i in range(2)]  # as if on two machines: a log folder each
        outs = [tmp_path / f"worker{i}.log" for i in range(2)]
        workers = [
            worker(
                ["--space", str(space), "--storage", url, "--trials", "3", *trial_flags(tiny_data, log)], out
            )
            for log, out in zip(logs, outs, strict=True)
        ]
        for process, out in zip(workers, outs, strict=True):
            finish(process, out)
        assert "lit@127.0.0.1" in outs[0].read_text() and "postgresql" in outs[0].read_text()
        trials = load(tmp_path, "pg", storage=url).get_trials()
        assert sorted(t.number for t in trials) == list(range(len(trials))) and 3 <= len(trials) <= 4
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        assert len({t.user_attrs["worker"] for t in trials}) == 2
        assert not (tmp_path / "machine0" / "sweeps.db").exists()  # the study is in PostgreSQL only


# --------------------------------------------------------------------------- resume, pruning
def test_a_killed_worker_s_trial_is_failed_and_the_sweep_continues(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = tmp_path / "logs"
    space = write_space(tmp_path / "resume.yaml", {"lr": [0.02, 0.05]})
    args = ["--space", str(space), "--trials", "2", "--heartbeat", "1", *trial_flags(tiny_data, logs, 2)]
    log = tmp_path / "killed.log"
    process = worker(args, log)
    deadline = time.monotonic() + 300
    while not (logs / "version_0" / "config.yaml").exists():  # written when training starts
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # as kill -9, or a machine lost: no chance to clean up
    process.wait()
    assert [t.state for t in load(logs, "resume").get_trials()] == [optuna.trial.TrialState.RUNNING]
    time.sleep(3)  # past the grace period (twice the heartbeat)

    assert sweep_main(args) == 0  # the same command
    out = capsys.readouterr().out
    assert "trial 0: its worker stopped without finishing it (no heartbeat); marked failed" in out
    first, second = load(logs, "resume").get_trials()
    assert first.state == optuna.trial.TrialState.FAIL and second.state == optuna.trial.TrialState.COMPLETE
    assert Path(second.user_attrs["run_dir"]).name == "version_1"
    row = next(line for line in out.splitlines() if line.startswith("0 ") and " fail " in line)
    assert "its worker stopped without finishing it" in row


def test_the_pruner_prunes_a_diverging_trial(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """lr 1000 diverges; the median pruner (after one completed trial) prunes it, and the sweep goes on."""
    logs = tmp_path / "logs"
    logs.mkdir()
    storage = f"sqlite:///{logs / 'sweeps.db'}"
    study = optuna.create_study(study_name="prune", storage=storage, direction="maximize")
    study.enqueue_trial({"lr": 0.05})  # a study made with Optuna, to fix the order of the trials
    study.enqueue_trial({"lr": 1000.0})
    space = write_space(tmp_path / "prune.yaml", {"lr": [0.05, 1000.0]})
    args = [
        "--space", str(space), "--study", "prune", "--trials", "2",
        "--pruner", "median", "--pruner-startup-trials", "1", *trial_flags(tiny_data, logs, 2),
    ]  # fmt: skip
    assert sweep_main(args) == 0
    good, diverged = load(logs, "prune").get_trials()
    assert good.state == optuna.trial.TrialState.COMPLETE and good.params["lr"] == 0.05
    assert diverged.state == optuna.trial.TrialState.PRUNED and diverged.params["lr"] == 1000.0
    reason = diverged.user_attrs["reason"]
    assert reason.startswith(("diverged: the training loss became", "pruned: val/acc")), reason
    out = capsys.readouterr().out
    assert f"trial 1 pruned: {reason}" in out
    assert load(logs, "prune").user_attrs[ATTR_SPACE] == {"lr": {"choices": [0.05, 1000.0]}}  # taken over


# --------------------------------------------------------------------------- bad input
def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        sweep_main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("sweep.py: error: ")
    return err[0]


#: A 1 KB space file whose aliases expand to 10**9 strings (a "billion laughs"): refused, not expanded.
BILLION_LAUGHS = (
    "fixed:\n  x0: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(f"  x{i}: &{chr(97 + i)} [{', '.join([f'*{chr(96 + i)}'] * 10)}]\n" for i in range(1, 9))
    + "space:\n  lr: *i\n"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "must be a YAML mapping with 'space:'"),
        ("space: {}\n", "must be a YAML mapping with 'space:'"),
        ("space: [lr\n", "not valid YAML"),
        ("space:\n  lr: [0.1]\nextra: 1\n", "unknown key 'extra'; the keys are space and fixed"),
        ("space:\n  bogus: [1, 2]\n", "space 'bogus' is not a flag of train.py"),
        ("space:\n  lr: [0.1]\nfixed:\n  bogus: 1\n", "fixed 'bogus' is not a flag of train.py"),
        ("space:\n  lr: {low: 0.1, high: 0.01}\n", "lr: low 0.1 is greater than high 0.01"),
        ("space:\n  lr: {low: 0, high: 0.1, log: true}\n", "lr: a log range needs low > 0, got 0"),
        ("space:\n  lr: {low: 0.01}\n", "lr: a range needs both low and high"),
        ("space:\n  lr: {low: 0.01, high: 0.1, scale: log}\n", "lr: unknown key 'scale'"),
        ("space:\n  lr: []\n", "lr: choices must be a non-empty list"),
        ("space:\n  lr: 0.1\n", "lr: expected {low: L, high: H}"),
        ("space:\n  dropout: {low: 0.0, high: 0.25, step: 0.1}\n", "must be a whole number of steps of 0.1"),
        ("space:\n  lr: {low: -1, high: 0.1}\n", "lr -1 is refused: --lr must be > 0, got -1.0"),
        ("space:\n  optimizer: [sgd, foo]\n", "optimizer 'foo' is refused: --optimizer must be one of sgd"),
        ("space:\n  log_dir: [a, b]\n", "space 'log_dir': is the sweep's own flag"),
        ("space:\n  lr: [0.1]\nfixed:\n  max_epochs: 0\n", "--max-epochs must be >= 1, got 0 (a fixed flag"),
        ("space:\n  lr: [0.1]\nfixed:\n  max_epochs: null\n", "--max-epochs cannot be null"),
        ("space:\n  max_epochs: [null, 2]\n", "max_epochs None is refused: --max-epochs cannot be null"),
        (
            "space:\n  devices: [1, 2]\n",
            "devices 2 is refused: --devices 2 --num-nodes 1: a trial runs in the sweep's own",
        ),
        ("space:\n  lr: [0.1]\nfixed:\n  lr: 0.2\n", "lr is both searched (space) and fixed"),
        (BILLION_LAUGHS, "YAML aliases (*a, line 3) are not accepted in a config file"),
        ("space:\n  lr: [0.1]\n  lr: [0.2]\n", "duplicate key 'lr' (line 3); keep one"),
    ],
)
def test_bad_space_files_exit_2_with_one_line_and_create_nothing(
    text: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(text)
    line = _usage_error(["--space", str(space), "--trials", "2", "--log-dir", str(tmp_path / "logs")], capsys)
    assert expected in line
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--storage", "postgresql+psycopg2://lit@127.0.0.1:1/none"], "cannot open the database"),
        (["--storage", "sqlite:////nonexistent-folder/sweeps.db"], "cannot open the database"),
        (["--storage", "nosuchdb://host/x"], "--storage nosuchdb://host/x: cannot open the database"),
        (["--storage", "postgresql+psycopg2://lit:secret@127.0.0.1:1/none"], "lit:***@127.0.0.1:1"),
        (["--trials", "0"], "--trials must be >= 1, got 0"),
        (["--sampler", "grid"], "--sampler grid: lr is a continuous range"),
        (["--lr", "0.1"], "--lr is given on the command line and searched in --space"),
        (
            ["--devices", "2", "--accelerator", "cpu"],
            "a trial runs in the sweep's own process, on one device",
        ),
        (["--metric", "val/f1"], "--metric must be one of val/acc, val/loss"),
        (["--study", ".."], "--study '..' cannot be a folder name"),
        (["--study", "é" * 200], "--study is 400 bytes long and a file name holds at most 255"),
    ],
)
def test_bad_flags_exit_2_with_one_line_and_create_nothing(
    extra: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = write_space(tmp_path / "space.yaml", {"lr": {"low": 0.01, "high": 0.1}})
    args = ["--space", str(space), "--log-dir", str(tmp_path / "logs")]
    line = _usage_error([*args, *([] if "--trials" in extra else ["--trials", "2"]), *extra], capsys)
    assert expected in line
    assert "secret" not in line
    assert not (tmp_path / "logs").exists()


def test_a_huge_grid_is_refused_before_it_is_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = write_space(
        tmp_path / "space.yaml",
        {
            "max_epochs": {"low": 1, "high": 10**6},
            "batch_size": {"low": 1, "high": 10**6},
            "log_every_n_steps": {"low": 1, "high": 10**6},
            "lr": [0.1, 0.01],
        },
    )
    args = ["--space", str(space), "--sampler", "grid", "--log-dir", str(tmp_path / "logs")]
    line = _usage_error(args, capsys)
    assert "has 2,000,000,000,000,000,000 grid points, more than 10,000" in line
    assert not (tmp_path / "logs").exists()


def test_the_readme_s_postgresql_url_works_with_the_sweep_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The PostgreSQL URL the README and --storage's help show is the one the PostgreSQL test's server
    uses, and its driver is installed: with no server at the address the sweep goes as far as
    connecting. A bare postgresql:// (psycopg 3 to SQLAlchemy >= 2.1) is answered with that URL."""
    with pytest.raises(SystemExit):
        sweep_main(["--help"])
    shown = (ROOT / "README.md").read_text() + capsys.readouterr().out
    assert set(re.findall(r"(postgresql[+\w]*)://", shown)) == {PG_SCHEME}
    space = write_space(tmp_path / "space.yaml", {"lr": {"low": 0.01, "high": 0.1}})
    args = ["--space", str(space), "--trials", "2", "--log-dir", str(tmp_path / "logs")]
    line = _usage_error([*args, "--storage", f"{PG_SCHEME}://lit:secret@127.0.0.1:1/none"], capsys)
    assert "cannot open the database" in line and "Connection refused" in line, line
    line = _usage_error([*args, "--storage", "postgresql://lit:secret@127.0.0.1:1/none"], capsys)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        assert f"use {PG_SCHEME}://lit:***@127.0.0.1:1/none" in line, line
    else:  # psycopg 3 installed beside the extra: the bare URL works too
        assert "cannot open the database" in line, line
    assert "secret" not in line
    assert not (tmp_path / "logs").exists()


def test_finders_are_refused_in_sweeps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--lr auto and --batch-size auto search before one run; a sweep's trials take numbers (one line, exit 2)."""
    space = write_space(tmp_path / "space.yaml", {"dropout": [0.0, 0.1]})
    args = ["--space", str(space), "--trials", "2", "--log-dir", str(tmp_path / "logs")]
    line = _usage_error([*args, "--lr", "auto"], capsys)
    assert "--lr auto runs a finder before one training run, and a sweep's trials take numbers" in line
    line = _usage_error([*args, "--batch-size", "auto"], capsys)  # the same line with or without a GPU
    assert (
        "--batch-size auto runs a finder before one training run, and a sweep's trials take numbers" in line
    )
    assert not (tmp_path / "logs").exists()


def test_other_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = tmp_path / "logs"
    space = write_space(tmp_path / "space.yaml", {"lr": [0.01, 0.1]})
    assert "--space FILE is required" in _usage_error(["--trials", "2"], capsys)
    assert "give --trials N or --timeout SECONDS" in _usage_error(["--space", str(space)], capsys)
    assert f"--space {tmp_path / 'none.yaml'}: no such file" in _usage_error(
        ["--space", str(tmp_path / "none.yaml"), "--trials", "1"], capsys
    )
    assert "--report: no " in _usage_error(["--report", "--log-dir", str(logs)], capsys)
    assert not logs.exists()

    # a study made with another space, metric or direction is not continued with this one
    logs.mkdir()
    storage = f"sqlite:///{logs / 'sweeps.db'}"
    other = optuna.create_study(study_name="space", storage=storage, direction="maximize")
    other.set_user_attr(ATTR_SPACE, {"lr": {"choices": [0.5]}})
    common = ["--space", str(space), "--trials", "2", "--log-dir", str(logs)]
    line = _usage_error(common, capsys)
    assert "--study space in sqlite:///" in line and "was created with another search space" in line
    assert "was created to maximize; give another --study or --direction maximize" in _usage_error(
        [*common, "--metric", "val/loss"], capsys
    )
    assert "--study nope: no such study" in _usage_error(
        ["--report", "--study", "nope", "--log-dir", str(logs)], capsys
    )
    assert len(other.get_trials()) == 0


# --------------------------------------------------------------------------- paths that stay paths
#: Folder names a URL would misread: a query string, a fragment, a percent escape, a space, non-ASCII.
URL_HOSTILE = ["a?b=1", "c#d", "e%20f", "g h", "é日"]


@pytest.mark.parametrize("name", URL_HOSTILE)
def test_the_default_storage_url_round_trips_its_path(tmp_path: Path, name: str) -> None:
    from sqlalchemy.engine import make_url

    from lit_mnist.sweeps.study import STORAGE_NAME, default_storage, sqlite_file

    for log_dir in (tmp_path / name / "logs", Path("rel") / name):  # absolute, and relative to the cwd
        url = default_storage(str(log_dir))
        assert sqlite_file(url) == log_dir / STORAGE_NAME
        assert make_url(url).database == str(log_dir / STORAGE_NAME)  # what SQLAlchemy opens


def test_sqlite_file_of_other_urls() -> None:
    from lit_mnist.sweeps.study import sqlite_file

    assert sqlite_file("sqlite:///x/sweeps.db?timeout=5") == Path("x/sweeps.db")
    assert sqlite_file("sqlite+pysqlite:////abs/sweeps.db") == Path("/abs/sweeps.db")
    for url in ("sqlite://", "sqlite:///:memory:", f"{PG_SCHEME}://u:p@host/db", "not a url"):
        assert sqlite_file(url) is None, url


def test_a_log_dir_that_looks_like_a_url_keeps_its_database_inside(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``?`` or ``#`` in --log-dir is part of the folder, not a query string: the database is inside, --report finds it."""
    logs = tmp_path / "a?b=1#c %20 é" / "logs"
    space = write_space(tmp_path / "lr.yaml", {"lr": {"low": 0.01, "high": 0.2, "log": True}})
    args = ["--space", str(space), "--sampler", "random", *trial_flags(tiny_data, logs)]
    assert sweep_main([*args, "--trials", "1"]) == 0
    assert (logs / "sweeps.db").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a?b=1#c %20 é", "lr.yaml"]  # nothing beside it
    capsys.readouterr()
    assert sweep_main([*args, "--report"]) == 0
    assert "Best config:" in capsys.readouterr().out


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder``: a disk that really fills. Root only; skips elsewhere."""
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield folder
    finally:  # lazily: the study's database connection may still hold a file open on it
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def test_a_full_disk_keeps_the_results_written_and_says_what_was_not(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The study's files are replaced whole or kept; a full disk under the report or the database is one line."""
    space = write_space(tmp_path / "lr.yaml", {"lr": {"low": 0.01, "high": 0.2, "log": True}})
    with small_disk(tmp_path / "disk", "4m") as disk:
        logs = disk / "logs"
        args = ["--space", str(space), "--sampler", "random", *trial_flags(tiny_data, logs)]
        args += ["--save-top-k", "0", "--logger", "csv"]  # a checkpoint is all a trial keeps: last.ckpt
        assert sweep_main([*args, "--trials", "1"]) == 0
        results = logs / "sweeps" / "lr"
        best = (results / "best.yaml").read_text()
        with open(disk / "filler", "wb") as filler, contextlib.suppress(OSError):
            while True:  # fill the disk to its last block
                filler.write(b"\0" * 65536)
                filler.flush()
        capsys.readouterr()

        assert sweep_main([*args, "--report"]) == 1
        out, err = capsys.readouterr()
        assert "Best trial:      0" in out  # the results are printed
        assert err.count("\n") == 1, err
        assert err.startswith("sweep.py: error: best.yaml, trials.csv, history.png not written in ")
        assert "No space left on device" in err and "--report" in err
        assert (results / "best.yaml").read_text() == best  # the earlier file, whole
        assert sorted(p.name for p in results.iterdir()) == ["best.yaml", "history.png", "trials.csv"]

        assert sweep_main([*args, "--trials", "3"]) == 1  # the database cannot grow: one line, trials kept
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "database or disk is full" in err, err
        assert "run the same command to continue" in err
        (disk / "filler").unlink()
        assert len(load(logs, "lr").trials) >= 1
