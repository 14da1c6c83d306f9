"""Find the README's worked examples and run them verbatim, as a user would paste them.

Convention: a worked example is a fenced ```python block in README.md whose first line is
``# example: NAME`` (NAME: letters, digits, ``-`` and ``_``; unique in the README). It is user code, run
as it is written: it takes its data from ``$LIT_MNIST_DATA_DIR`` (``MNISTDataModule()`` with no
``data_dir``) or another setting the project reads, or from ``../shared/data`` as the two commands do (the test
then runs it in a folder whose ``../shared/data`` holds the tiny dataset), never from a path the test rewrites.

``readme_example(NAME)`` returns the block's code; ``run_example(NAME, data_dir, workdir)`` runs it in
this process (``exec`` in a fresh namespace named ``__main__``), in ``workdir`` (where Lightning writes
``lightning_logs``), with ``$LIT_MNIST_DATA_DIR`` set to ``data_dir``, and returns the namespace, so a
test asserts on what the example built (``ns["trainer"]``, ``ns["model"]``, its results). The
working folder and the variable are restored afterwards. Warnings the example raises (Lightning's
advice on a tiny dataset, e.g. the logging interval) are what a user sees, not failures: they are
kept in ``ns["__warnings__"]``.

Use it with :func:`example_data` (a tiny IDX dataset big enough for the library's default 5,000
validation images), e.g.::

    def test_my_example(example_data_dir, tmp_path):
        ns = run_example("my-example", example_data_dir, tmp_path)
        assert ns["trainer"].state.finished
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

from lit_mnist.data import DATA_DIR_ENV
from tests.conftest import write_tiny_mnist

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```python\n# example: ([\w-]+)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def readme_examples(readme: Path = README) -> dict[str, str]:
    """Every marked example of the README, by name (the marker line included in the code)."""
    examples: dict[str, str] = {}
    for match in _BLOCK.finditer(readme.read_text()):
        name = match[1]
        assert name not in examples, f"{readme.name}: two examples are named {name!r}"
        examples[name] = f"# example: {name}\n{match[2]}"
    return examples


def readme_example(name: str, readme: Path = README) -> str:
    """The code of the README's example ``name``; fails the test, naming the examples there, if there is none."""
    examples = readme_examples(readme)
    assert name in examples, (
        f"{readme.name} has no ```python block starting '# example: {name}' (has: {sorted(examples)})"
    )
    return examples[name]


def run_example(name: str, data_dir: Path, workdir: Path, readme: Path = README) -> dict[str, Any]:
    """Run the README's example ``name`` verbatim in ``workdir`` with ``$LIT_MNIST_DATA_DIR=data_dir``."""
    code = readme_example(name, readme)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    saved_dir, saved_env = Path.cwd(), os.environ.get(DATA_DIR_ENV)
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    os.environ[DATA_DIR_ENV] = str(data_dir)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exec(compile(code, f"README.md:example:{name}", "exec"), namespace)
    finally:
        os.chdir(saved_dir)
        if saved_env is None:
            os.environ.pop(DATA_DIR_ENV, None)
        else:
            os.environ[DATA_DIR_ENV] = saved_env
    namespace["__warnings__"] = [str(w.message) for w in caught]
    return namespace


def example_data(root: Path, n_train: int = 5_600, n_test: int = 200) -> Path:
    """A tiny MNIST for the examples: 5,600 training images (the default 5,000 validation and 600 to
    train on) and 200 test images, in ``root/MNIST/raw``; returns ``root``."""
    return write_tiny_mnist(root, n_train=n_train, n_test=n_test)
