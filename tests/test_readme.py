"""The README's Python blocks, run as a user runs them: from a fresh folder, on the real MNIST."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lit_mnist.data import DATA_DIR_ENV

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block(after: str) -> str:
    """The first ```python block of the README that follows the line ``after``."""
    text = README.read_text()
    match = re.search(re.escape(after) + r".*?```python\n(.*?)```", text, re.S)
    assert match, f"README has no python block after {after!r}"
    return match.group(1)


@pytest.mark.slow
@pytest.mark.parametrize(
    # "## Using it from Python" runs verbatim on a tiny dataset in tests/test_readme_examples.py (from-python)
    "heading",
    ["From Python, the fast path is the same few pieces"],
)
def test_readme_python_block_runs(heading: str, real_data_dir: Path, tmp_path: Path) -> None:
    # a block names the README's data folder, or reads $LIT_MNIST_DATA_DIR (MNISTDataModule() with no folder)
    code = _python_block(heading).replace('"../shared/data"', repr(str(real_data_dir)))
    assert str(real_data_dir) in code or "LIT_MNIST_DATA_DIR" in code
    script = tmp_path / "snippet.py"
    script.write_text(code.replace("max_epochs=3", "max_epochs=1"))  # one epoch is enough to run it
    env = {**os.environ, "PYTHONWARNINGS": "ignore", DATA_DIR_ENV: str(real_data_dir)}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "lightning_logs").glob("version_0/checkpoints/*.ckpt"))
