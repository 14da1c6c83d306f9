"""``evaluate``'s intervals (overall and per class) and ``evaluate A.ckpt --compare B.ckpt``: McNemar's exact
test on the same test images, and the refusal of checkpoints that do not take the same images."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lit_mnist.cli.evaluate import main as evaluate_main
from lit_mnist.cli.evaluate import short_names
from lit_mnist.cli.train import train_main
from lit_mnist.stats import EN_DASH, mcnemar_exact, wilson_interval
from tests.conftest import shrunk_args, write_tiny_mnist


def _train(data_dir: Path, log_dir: Path, *extra: str) -> Path:
    assert train_main([*shrunk_args(data_dir, log_dir, max_epochs=1), *extra]) == 0
    return Path(json.loads((log_dir / "version_0" / "results.json").read_text())["best_checkpoint"])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> dict[str, Path]:
    """``good``, ``weak`` (a narrow MLP, a small step) on the tiny MNIST; ``fashion`` on a tiny Fashion-MNIST."""
    logs = tmp_path_factory.mktemp("compare")
    fashion_data = write_tiny_mnist(tmp_path_factory.mktemp("fashion_data"), folder="FashionMNIST")
    return {
        "good": _train(tiny_data, logs / "good"),
        "weak": _train(tiny_data, logs / "weak", "--hidden-sizes", "8", "--lr", "0.001"),
        "fashion": _train(fashion_data, logs / "fashion", "--dataset", "fashion-mnist"),
    }


def test_evaluate_gives_every_accuracy_its_interval(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "eval.json"
    assert evaluate_main([str(checkpoints["weak"]), "--accelerator", "cpu", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    result = json.loads(report.read_text())
    n, right = result["num_images"], result["num_correct"]
    low, high = wilson_interval(right, n)
    assert (
        result["test_acc_ci"] == pytest.approx([low, high])
        and result["interval_method"] == "95% Wilson score interval"
    )
    assert f"({right}/{n}; 95% CI {100 * low:.2f}{EN_DASH}{100 * high:.2f}; test_acc" in out
    matrix = result["confusion_matrix"]
    for k, interval in enumerate(result["per_class_acc_ci"]):
        assert interval == pytest.approx(list(wilson_interval(matrix[k][k], sum(matrix[k]))))
    assert len(re.findall(rf"\(\d+/\d+; 95% CI \d+\.\d\d{EN_DASH}\d+\.\d\d\)", out)) == 10  # one per class
    assert "95% Wilson score interval" in out  # the method, named once


def test_compare_says_whether_two_models_differ_with_mcnemars_p_value(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "compare.json"
    args = [str(checkpoints["good"]), "--compare", str(checkpoints["weak"]), "--accelerator", "cpu"]
    assert evaluate_main([*args, "--json", str(report)]) == 0
    out = capsys.readouterr().out
    result = json.loads(report.read_text())
    compared = result["compare"]
    b, c, n = compared["only_this_right"], compared["only_other_right"], result["num_images"]
    assert b - c == round((result["test_acc"] - compared["test_acc"]) * n)  # the same images, paired
    assert compared["p_value"] == mcnemar_exact(b, c) and compared["method"] == "McNemar's exact test"
    (sentence,) = [line for line in out.splitlines() if line.startswith(f"On the same {n} test images: ")]
    assert "McNemar's exact test: p = " in sentence and f"gets right: {b}, only " in sentence
    good, weak = short_names(checkpoints["good"], checkpoints["weak"])  # the endings that tell them apart
    assert (good, weak) == (checkpoints["good"].name, checkpoints["weak"].name)  # epochEE-val_accA.AAAA.ckpt
    if compared["p_value"] < 0.05:
        assert f"{good if b > c else weak} is better than" in sentence
    else:
        assert "No significant difference" in sentence

    assert (
        evaluate_main(
            [str(checkpoints["good"]), "--compare", str(checkpoints["good"]), "--accelerator", "cpu"]
        )
        == 0
    )
    assert "are right and wrong on the same images (McNemar's exact test: p = 1)" in capsys.readouterr().out


def test_compare_refuses_checkpoints_of_other_images_in_one_line(
    checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(["--ckpt-path", str(checkpoints["good"]), "--compare", str(checkpoints["fashion"])])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(
        f"evaluate.py: error: --compare {checkpoints['fashion']} takes fashion-mnist: 10 classes"
    )
    assert "takes mnist: 10 classes" in line and "needs both models tested on the same images" in line
    assert "Test accuracy" not in captured.out  # refused before any work

    for args, message in (
        ([str(checkpoints["good"]), "--compare", "missing.ckpt"], "--compare missing.ckpt: no such file"),
        ([str(checkpoints["good"]), "--ckpt-path", str(checkpoints["weak"])], "give the checkpoint once"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            evaluate_main(args)
        assert exit_info.value.code == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert message in line, line


def test_two_last_checkpoints_are_told_apart_by_their_run_folders() -> None:
    first, second = (
        Path("/logs/version_0/checkpoints/last.ckpt"),
        Path("/logs/version_1/checkpoints/last.ckpt"),
    )
    assert short_names(first, second) == (
        "version_0/checkpoints/last.ckpt",
        "version_1/checkpoints/last.ckpt",
    )
