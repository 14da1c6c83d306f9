"""The README as a user reads it: the two commands on its first screen, links that lead somewhere, commands
whose flags the scripts accept, and its Python run as a user runs it (real MNIST, from a fresh folder)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lit_mnist.data import DATA_DIR_ENV
from tests.conftest import HANG_GUARD_S
from tests.readme_examples import readme_example

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
INSTALL_AND_TRAIN = 'pip install -e ".[dev]" && python scripts/train.py --data-dir ../shared/data'
RUN_THE_TESTS = "LIT_MNIST_DATA_DIR=../shared/data python -m pytest -n 2"
SCRIPTS = ("train", "evaluate", "predict", "export", "sweep")


def _code_lines(language: str) -> list[str]:
    """The lines of the README's ```language blocks, with ``\\``-continued lines joined."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.S | re.M)
    return [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]


def _flags(text: str) -> set[str]:
    """The long options in ``text``, with ``--a/--no-a`` and ``--limit-{train,val}-x`` spelled out."""
    text = re.sub(r"\{([\w,]+)\}", lambda m: "(" + "|".join(m[1].split(",")) + ")", text)
    flags = set()
    for flag in re.findall(r"(?<![\w-])--[a-z][\w()|-]*", text):
        stem = re.match(r"(.*?)\((.*?)\)(.*)", flag)
        parts = [stem[1] + part + stem[3] for part in stem[2].split("|")] if stem else [flag]
        flags.update(p.rstrip("-") for p in parts)
    return flags


@pytest.fixture(scope="module")
def help_flags() -> dict[str, set[str]]:
    """Every long option each script's ``--help`` lists."""
    found = {}
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for name in SCRIPTS:
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / f"{name}.py"), "--help"],
            capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        found[name] = _flags(result.stdout)
    return found


def test_the_two_commands_are_on_the_first_screen() -> None:
    first_screen = README.read_text().splitlines()[:24]
    assert INSTALL_AND_TRAIN in first_screen and RUN_THE_TESTS in first_screen


@pytest.mark.parametrize("page", [README, BENCHMARKS], ids=["README", "benchmarks"])
def test_every_link_leads_somewhere(page: Path) -> None:
    text = page.read_text()
    headings = {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.*)$", text, re.M)
    }  # GitHub's anchors
    anchors = re.findall(r"\]\(#([\w-]+)\)", text)
    assert len(anchors) >= 10  # the table of contents
    assert not set(anchors) - headings
    files = re.findall(r"\]\((?!https?:|#)([^)]+)\)", text)
    for name in files:
        assert (page.parent / name).is_file(), name
    if page == README:
        assert "docs/benchmarks.md" in files


def test_every_command_flag_is_one_the_script_accepts(help_flags: dict[str, set[str]]) -> None:
    checked = 0
    for line in _code_lines("bash"):
        line = line.split(" #")[0]  # not the comment
        for name, args in re.findall(r"scripts/(\w+)\.py([^&|;]*)", line):
            if name in help_flags:
                assert not _flags(args) - help_flags[name], line
                checked += 1
    assert checked >= 20


def test_every_sweep_flag_is_one_the_sweep_accepts(help_flags: dict[str, set[str]]) -> None:
    text = README.read_text()
    section = re.search(r"^### Sweeps\n(.*?)^## ", text, re.S | re.M)
    assert section
    flags = _flags(re.sub(r"^```ya?ml\n.*?^```", "", section[1], flags=re.S | re.M))  # not the space file's keys
    assert {"--space", "--trials", "--storage", "--report"} <= flags
    assert not flags - help_flags["sweep"] - help_flags["train"]  # train.py flags go to every trial


def test_the_flags_table_lists_train_flags(help_flags: dict[str, set[str]]) -> None:
    text = README.read_text()
    table = re.search(r"^### Flags\n(.*?)^#", text, re.S | re.M)
    assert table
    listed = _flags(table[1])
    assert len(listed) >= 60
    assert not listed - help_flags["train"]
    unlisted = {flag for flag in help_flags["train"] - listed if not flag.startswith("--no-")}
    assert not unlisted - {"--help", "--config", "--print-config"}  # every flag is in it, but the negations


def test_no_history_and_no_long_prose_lines() -> None:
    text = README.read_text()
    assert not re.search(r"issue ?[0-9]|used\sto", text, re.I)  # history lives in the commit messages
    assert not re.search(r"\b(commit|at) [0-9a-f]{7,40}\b", text)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    long = [line for line in prose.splitlines() if len(line) > 150 and not line.startswith("|")]
    assert not long


@pytest.mark.slow
def test_the_library_example_on_the_real_mnist(real_data_dir: Path, tmp_path: Path) -> None:
    """``lm.train`` twice in one process, as the README's block stands, from a checkout beside ``shared/data``."""
    code = readme_example("library")
    assert 'data_dir="../shared/data"' in code
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(real_data_dir)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    script = checkout / "snippet.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop(DATA_DIR_ENV, None)  # the block names its data folder itself
    result = subprocess.run(
        [sys.executable, str(script)], cwd=checkout, capture_output=True, text=True, timeout=HANG_GUARD_S, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted((checkout / "lightning_logs").glob("version_*"))
    assert len(runs) == 2  # two runs, two folders
    for run in runs:
        results = json.loads((run / "results.json").read_text())
        assert results["test_acc"] > 0.9  # one epoch of the real MNIST
        assert (run / "config.yaml").is_file()
    assert yaml.safe_load((runs[1] / "config.yaml").read_text())["lr"] == 0.05  # the replace()d copy
