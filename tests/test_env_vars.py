"""Every environment variable lit_mnist reads is in the README's table, and a bad value is one line, exit 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lit_mnist import data, runs, runtime
from lit_mnist.plan import LAUNCHER_VARIABLES
from tests.conftest import shrunk_args

ROOT = Path(__file__).resolve().parents[1]
#: The names lit_mnist keeps in constants, by the constant's name.
CONSTANTS = {
    "DATA_DIR_ENV": data.DATA_DIR_ENV,
    "THREADS_ENV": runtime.THREADS_ENV,
    "RUN_VERSION_ENV": runs.RUN_VERSION_ENV,
}


def variables_read() -> set[str]:
    """The variables lit_mnist's source reads: ``os.environ``/``os.getenv`` with a literal or a constant."""
    found: set[str] = set(LAUNCHER_VARIABLES)
    pattern = re.compile(r"""(?:environ(?:\.get)?|getenv)\(?\[?\s*(?:["']([A-Z][A-Z0-9_]+)["']|([A-Z][A-Z0-9_]+))""")
    for path in (ROOT / "lit_mnist").rglob("*.py"):
        for literal, constant in pattern.findall(path.read_text()):
            found.add(literal or CONSTANTS.get(constant, constant))
    found |= set(re.findall(r'"([A-Z][A-Z0-9_]+)" in os\.environ', (ROOT / "lit_mnist" / "plan.py").read_text()))
    return found


def test_the_readme_table_names_every_variable_lit_mnist_reads() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Environment variables") :]
    table = table[: table.index("\n## ")]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    read = variables_read()
    assert {"LIT_MNIST_DATA_DIR", "OMP_NUM_THREADS", "LIT_MNIST_RUN_VERSION", "WANDB_MODE"} <= read
    assert read <= documented, sorted(read - documented)


@pytest.mark.parametrize(
    ("name", "value", "flags", "message"),
    [
        ("LIT_MNIST_DATA_DIR", "FILE", ["--data-dir", None], "the environment variable LIT_MNIST_DATA_DIR="),
        ("NODE_RANK", "abc", [], "the environment variable NODE_RANK='abc' must be a whole number >= 0"),
        ("WORLD_SIZE", "-1", [], "the environment variable WORLD_SIZE='-1' must be a whole number >= 0"),
        ("WANDB_MODE", "sometimes", ["--logger", "wandb"], "WANDB_MODE='sometimes' is not a W&B mode"),
        ("MASTER_ADDR", "node 0", [], "MASTER_ADDR='node 0' is not a host name or address"),
        ("WANDB_BASE_URL", "api.wandb.ai", ["--logger", "wandb"], "WANDB_BASE_URL='api.wandb.ai' is not an http(s) URL"),
        ("NETRC", "/", ["--logger", "wandb"], "NETRC='/' names a folder"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(
    name: str, value: str, flags: list[str | None], message: str, tiny_data: Path, tmp_path: Path
) -> None:
    args = shrunk_args(tiny_data, tmp_path / "logs")
    if flags[:1] == ["--data-dir"]:  # the folder comes from the variable
        index = args.index("--data-dir")
        del args[index : index + 2]
        flags = []
    if value == "FILE":
        value = str(tmp_path / "a-file")
        Path(value).write_text("not a folder")
    env = {**os.environ, name: value}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *args, *(f for f in flags if f is not None)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "logs").exists()
