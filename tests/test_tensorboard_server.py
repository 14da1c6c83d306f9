"""TensorBoard as a user's browser gets it: a real ``tensorboard`` server on a loopback port, asked over HTTP.

Reading the event files (``EventAccumulator``) does not show what the server makes of them: a tag written
again at an earlier step makes the server drop the points after it, so a curve can look whole in the
files and be a single dot in the browser. These tests run a 2-epoch shrunken training, start the server
the user would start (``tensorboard --logdir LOG_DIR``), ask its data API what TensorBoard's own frontend
asks (runs, scalar and image tags and points, the HParams experiment and sessions), and stop it.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from lit_mnist.cli.train import train_main
from tests.conftest import RunningServer, shrunk_args

EPOCHS = 2
#: ``shrunk_args`` on ``tiny_data``: 600 training images less ``--val-size 100``, ``--batch-size 32``.
STEPS_PER_EPOCH = 16  # ceil(500 / 32) optimizer steps
LOG_EVERY = 5  # --log-every-n-steps
#: Steps count optimizer steps from 0; an epoch's points sit at the step of its last optimizer step.
EPOCH_ENDS = [(epoch + 1) * STEPS_PER_EPOCH - 1 for epoch in range(EPOCHS)]  # [15, 31]
#: ``test`` after ``fit`` writes at ``global_step``, the count of optimizer steps taken, as Lightning does.
TEST_STEP = EPOCHS * STEPS_PER_EPOCH  # 32
PER_EPOCH_SCALARS = ("train/acc", "val/loss", "val/acc", "val/acc_best", "perf/epoch_time_s")
VAL_IMAGES = ("val/predictions", "val/misclassified", "val/confusion_matrix")
#: The HParams tab's metrics, each under its own tag, and the results.json key holding its value.
HP_METRICS = {"hp/val_acc_best": "val_acc_best", "hp/test_acc": "test_acc"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tensorboard_command(log_dir: Path) -> Callable[[int], list[str]]:
    """``tensorboard --logdir LOG_DIR`` on a loopback port, with the Python data loader (``--load_fast=false``)."""
    return lambda port: [
        sys.executable, "-m", "tensorboard.main",
        "--logdir", str(log_dir), "--host", "127.0.0.1", "--port", str(port), "--load_fast=false",
        # read the finished run once, before answering: the first answer is all a browser would get
        "--reload_interval", "0", "--reload_task", "blocking",
    ]  # fmt: skip


@dataclass
class Served:
    url: str
    run: Path
    results: dict[str, Any]

    def get(self, path: str, **query: Any) -> Any:
        """``GET path?query`` as JSON."""
        return _json(urllib.request.Request(f"{self.url}{path}?{urllib.parse.urlencode(query)}"))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """``POST path`` with a JSON body (the HParams plugin's requests), as JSON."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        return _json(urllib.request.Request(self.url + path, data=data, headers=headers, method="POST"))

    def scalars(self, tag: str) -> list[tuple[int, float]]:
        """The ``(step, value)`` points of a scalar tag of the run (the server sends ``[wall_time, step, value]``)."""
        return [
            (step, value) for _, step, value in self.get("/data/plugin/scalars/scalars", run=RUN, tag=tag)
        ]

    def steps(self, tag: str) -> list[int]:
        return [step for step, _ in self.scalars(tag)]


RUN = "version_0"


def _json(request: urllib.request.Request) -> Any:
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)
    except urllib.error.HTTPError as err:  # say what the server said, not only its status
        pytest.fail(
            f"{request.get_method()} {request.full_url}: {err.code} {err.read().decode(errors='replace')}"
        )


@pytest.fixture(scope="module")
def served(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A finished 2-epoch run (default loggers) and a TensorBoard server showing its log dir."""
    root = tmp_path_factory.mktemp("tensorboard_server")
    log_dir = root / "logs"
    assert train_main(shrunk_args(tiny_data, log_dir, max_epochs=EPOCHS)) == 0
    run = log_dir / RUN
    results = json.loads((run / "results.json").read_text())
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == EPOCHS * STEPS_PER_EPOCH  # the step arithmetic of this file holds
    with RunningServer(
        tensorboard_command(log_dir), "/data/runs", root / "tensorboard.log", timeout=120
    ) as url:
        yield Served(url, run, results)


def test_the_server_lists_the_run(served: Served) -> None:
    assert served.get("/data/runs") == [RUN]


def test_per_epoch_scalars_have_one_point_per_epoch_where_the_epoch_ended(served: Served) -> None:
    tags = set(served.get("/data/plugin/scalars/tags")[RUN])
    assert set(PER_EPOCH_SCALARS) <= tags
    per_epoch = sorted(set(PER_EPOCH_SCALARS) | {tag for tag in tags if tag.startswith("val/")})
    assert {tag: served.steps(tag) for tag in per_epoch} == dict.fromkeys(per_epoch, EPOCH_ENDS)


def test_val_acc_best_is_the_running_best_of_val_acc(served: Served) -> None:
    val_acc = [value for _, value in served.scalars("val/acc")]
    best = [value for _, value in served.scalars("val/acc_best")]
    running_best = [max(val_acc[: i + 1]) for i in range(len(val_acc))]
    assert best == pytest.approx(running_best, abs=1e-6)
    assert best[-1] == pytest.approx(served.results["val_acc_best"], abs=1e-6)


def test_train_loss_every_log_every_n_steps(served: Served) -> None:
    expected = list(range(LOG_EVERY - 1, EPOCHS * STEPS_PER_EPOCH, LOG_EVERY))  # 4, 9, ..., 29
    assert served.steps("train/loss") == expected


@pytest.mark.parametrize(("tag", "key"), [("test/acc", "test_acc"), ("test/loss", "test_loss")])
def test_test_metrics_are_one_point_at_global_step(served: Served, tag: str, key: str) -> None:
    assert served.scalars(tag) == [(TEST_STEP, pytest.approx(served.results[key], abs=1e-6))]


def test_hparams_metrics_have_their_own_tags(served: Served) -> None:
    for tag, key in HP_METRICS.items():
        points = served.scalars(tag)
        assert len(points) == 1, (tag, points)
        assert points[0][1] == pytest.approx(served.results[key], abs=1e-6), tag


def test_images_one_per_epoch_and_one_for_test(served: Served) -> None:
    tags = served.get("/data/plugin/images/tags")[RUN]
    assert {*VAL_IMAGES, "test/confusion_matrix"} <= set(tags)
    expected = {**dict.fromkeys(VAL_IMAGES, EPOCH_ENDS), "test/confusion_matrix": [TEST_STEP]}
    images = {tag: served.get("/data/plugin/images/images", run=RUN, tag=tag) for tag in expected}
    assert {tag: [image["step"] for image in found] for tag, found in images.items()} == expected
    for tag, found in images.items():  # each one as the browser fetches it: a PNG
        for image in found:
            url = f"{served.url}/data/plugin/images/individualImage?{image['query']}"
            with urllib.request.urlopen(url, timeout=60) as response:
                assert response.read(len(PNG_MAGIC)) == PNG_MAGIC, (tag, image["step"])


def _checkpoint_hparams(served: Served) -> dict[str, Any]:
    """The module's and the datamodule's hyperparameters, as the best checkpoint holds them."""
    ckpt = torch.load(served.results["best_checkpoint"], map_location="cpu", weights_only=True)
    module, data = ckpt["hyper_parameters"], ckpt["datamodule_hyper_parameters"]
    assert {"lr", "optimizer"} <= set(module) and {"batch_size", "val_size"} <= set(data)
    return {**module, **data}


def test_hparams_experiment_lists_module_and_datamodule_hyperparameters(served: Served) -> None:
    experiment = served.post("/data/plugin/hparams/experiment", {"experimentName": ""})
    names = {info["name"] for info in experiment.get("hparamInfos", [])}
    expected = set(_checkpoint_hparams(served))
    assert expected - names == set(), f"missing from the HParams tab: {sorted(expected - names)}"
    metrics = {info["name"]["tag"] for info in experiment.get("metricInfos", [])}
    assert metrics == set(HP_METRICS)


def test_hparams_session_holds_the_values_and_the_results(served: Served) -> None:
    request = {
        "experimentName": "",
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [],
        "startIndex": 0,
        "sliceSize": 100,
    }
    groups = served.post("/data/plugin/hparams/session_groups", request)["sessionGroups"]
    assert [[session["name"] for session in group["sessions"]] for group in groups] == [[RUN]]
    (group,) = groups
    hparams = _checkpoint_hparams(served)
    for name in ("lr", "momentum", "batch_size", "val_size"):  # numbers: the HParams tab shows them as floats
        assert group["hparams"][name] == pytest.approx(hparams[name]), name
    for name in ("optimizer", "loader"):
        assert group["hparams"][name] == hparams[name], name
    values = {metric["name"]["tag"]: metric["value"] for metric in group["metricValues"]}
    assert values == {tag: pytest.approx(served.results[key], abs=1e-6) for tag, key in HP_METRICS.items()}
