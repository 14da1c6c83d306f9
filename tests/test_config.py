"""RunConfig: one typed, frozen config of a run; train(config) as a library call."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path

import pytest
import yaml

import lit_mnist as lm
from lit_mnist.build import DATA_SETTINGS, MODEL_SETTINGS
from lit_mnist.cli.flags import parse_run, run_parser
from lit_mnist.config import GROUPS, LoggerName, RunConfig
from lit_mnist.data import LOADERS
from lit_mnist.datasets import DATASETS
from lit_mnist.errors import ConfigError
from lit_mnist.folder import COLORS, ImageFolderDataModule
from lit_mnist.loggers import LOGGERS
from lit_mnist.mnist import MNISTDataModule
from lit_mnist.module import MODELS, OPTIMIZERS, SCHEDULERS, MNISTClassifier
from lit_mnist.runtime import ACCELERATORS, PRECISIONS


@pytest.mark.parametrize(
    ("settings", "key", "message"),
    [
        ({"lr": -1}, "lr", "must be > 0, got -1"),
        ({"lr": "fast"}, "lr", "must be a number or one of auto; got 'fast'"),
        ({"optimizer": "foo"}, "optimizer", "must be one of sgd, adam, adamw, rmsprop; got 'foo'"),
        ({"max_epochs": 0}, "max_epochs", "must be >= 1, got 0"),
        ({"max_epochs": True}, "max_epochs", "must be an integer; got True"),
        ({"hidden_sizes": (128, 0)}, "hidden_sizes", "must be one or more positive integers"),
        ({"ema": 0.99, "swa_lr": 0.1}, "ema", "and --swa-lr both average the weights"),
        ({"image_size": 32}, "image_size", "is a flag of --dataset folder"),
        (
            {"batch_size": "auto", "ckpt_path": "last"},
            "batch_size",
            "a resumed run (--ckpt-path) keeps its own",
        ),
        (
            {"devices": "0,1", "accelerator": "cpu"},
            "devices",
            "picks devices by index, which the CPU does not have",
        ),
        ({"max_time": "2h"}, "max_time", "must be DD:HH:MM:SS"),
        ({"recipe": "fastest"}, "recipe", "'fastest' is not a recipe; choose one of classic"),
        ({"logger": ("csv", "x")}, "logger", "must be a list, each one of tensorboard, csv, mlflow, wandb"),
        ({"model": "cnn", "cnn_kernel_sizes": (4,)}, "cnn_kernel_sizes", "must be odd positive sizes"),
        ({"seed": -1}, "seed", "must be in [0, 4294967295] (Lightning seeds NumPy with it), got -1"),
        ({"seed": 2**32}, "seed", "must be in [0, 4294967295]"),
        ({"dataset": "folder", "image_size": 100_000}, "image_size", "must be at most 1024, got 100000"),
        ({"max_epochs": 2**40}, "max_epochs", "must be at most 2147483647, got 1099511627776"),
        ({"hidden_sizes": (128, 2**33)}, "hidden_sizes", "must be at most 2147483647"),
        ({"threads": 0}, "threads", "must be >= 1, got 0"),
        ({"threads": 5000}, "threads", "must be at most 1024, got 5000"),
        ({"mlflow_experiment": " "}, "mlflow_experiment", "must be a name of 1 to 500 characters"),
    ],
)
def test_an_invalid_config_raises_a_typed_error_naming_the_field(
    settings: dict[str, object], key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig(**settings)  # type: ignore[arg-type]
    assert info.value.key == key
    assert message in info.value.message
    assert info.value.flag == "--" + key.replace("_", "-")


def test_a_config_is_frozen_and_replace_makes_a_checked_copy() -> None:
    cfg = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 0.1  # type: ignore[misc]
    faster = dataclasses.replace(cfg, lr=0.05)
    assert (cfg.lr, faster.lr) == (0.01, 0.05)
    assert faster.flag_changes(cfg) == {"lr": 0.05}
    with pytest.raises(ConfigError, match="lr must be > 0"):
        dataclasses.replace(cfg, lr=0.0)


def test_settings_of_the_other_network_are_not_checked() -> None:
    """The CNN's settings mean nothing to the MLP (and the reverse): a sweep over both models keeps them."""
    assert RunConfig(model="mlp", cnn_kernel_sizes=(4,)).model == "mlp"
    assert RunConfig(model="cnn", hidden_sizes=(0,)).model == "cnn"


def test_numpy_numbers_are_taken_as_python_numbers() -> None:
    import numpy as np

    cfg = RunConfig(batch_size=np.int64(128), lr=np.float32(0.5), hidden_sizes=(np.int64(32),))  # type: ignore[arg-type]
    assert (type(cfg.batch_size), type(cfg.lr), type(cfg.hidden_sizes[0])) == (int, float, int)
    assert yaml.safe_load(yaml.safe_dump(cfg.to_dict()))["batch_size"] == 128


def test_names_from_before_the_split_still_import() -> None:
    """Code and LightningCLI configs that name the datamodules and the logger at their earlier modules."""
    from lit_mnist.callbacks import MonitoringTensorBoardLogger
    from lit_mnist.data import MNISTDataModule as FromData
    from lit_mnist.loggers import MonitoringTensorBoardLogger as FromLoggers

    assert FromData is MNISTDataModule and MonitoringTensorBoardLogger is FromLoggers


def test_lists_become_tuples_and_dicts_round_trip() -> None:
    cfg = RunConfig(hidden_sizes=[256, 128], logger=["csv"])  # type: ignore[arg-type]
    assert cfg.hidden_sizes == (256, 128) and cfg.logger == ("csv",)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert RunConfig.from_dict({"max-epochs": 3}).max_epochs == 3  # dashes, as on the command line
    with pytest.raises(ConfigError, match="max_epoch is not a setting of a run"):
        RunConfig.from_dict({"max_epoch": 3})


def test_every_field_is_a_flag_with_words_in_a_group() -> None:
    parser = run_parser()
    help_text = parser.format_help()
    for field in dataclasses.fields(RunConfig):
        flag = "--" + field.name.replace("_", "-")
        assert flag in help_text, flag
        assert field.metadata["group"] in GROUPS
        assert len(field.metadata["help"].split()) >= 3, field.name  # a reason, not a type
        assert ":meth:" not in field.metadata["help"] and "``" not in field.metadata["help"]
    assert parse_run([]) == RunConfig()  # the flags' defaults are the config's


def test_choices_and_defaults_agree_with_the_classes_they_build() -> None:
    hints = typing.get_type_hints(RunConfig)
    assert set(typing.get_args(hints["dataset"])) == set(DATASETS)
    assert typing.get_args(hints["model"]) == MODELS
    assert typing.get_args(hints["optimizer"]) == OPTIMIZERS
    assert typing.get_args(hints["scheduler"]) == SCHEDULERS
    assert typing.get_args(hints["accelerator"]) == ACCELERATORS
    assert typing.get_args(hints["precision"]) == PRECISIONS
    assert typing.get_args(hints["logger"])[0] == LoggerName
    assert typing.get_args(typing.get_args(hints["logger"])[0]) == LOGGERS
    assert typing.get_args(hints["loader"]) == LOADERS
    assert typing.get_args(hints["color"]) == COLORS
    assert set(typing.get_args(hints["cnn_padding"])) == {"same", "valid"}
    cfg = RunConfig()
    # the run asks for step groups and takes the dataset's own validation size; the rest are the libraries'
    differs = {"steps_per_batch", "val_size", "data_dir"}
    for cls, names in ((MNISTClassifier, MODEL_SETTINGS), (MNISTDataModule, DATA_SETTINGS),
                       (ImageFolderDataModule, ("image_size", "color", "test_size", "skip_bad_images"))):  # fmt: skip
        params = inspect.signature(cls.__init__).parameters
        for name in names:
            if name in params and name not in differs:
                default = params[name].default
                expected = tuple(default) if isinstance(default, (list, tuple)) else default
                assert getattr(cfg, name) == expected, (cls.__name__, name)


def test_train_is_a_library_call_that_runs_twice_in_one_process(
    run_config: RunConfig, tmp_path: Path
) -> None:
    cfg = dataclasses.replace(run_config, max_epochs=1, logger=("csv",))
    first, second = lm.train(cfg), lm.train(dataclasses.replace(cfg, lr=0.05))
    assert first.run_dir != second.run_dir and Path(first.run_dir or "").name == "version_0"
    assert first.test_acc > 0.5 and second.test_acc > 0.5 and first.test_loss != second.test_loss
    assert first.config == cfg and second.config.lr == 0.05  # the config each used, data folder resolved
    assert Path(first.best_checkpoint or "").is_file() and Path(first.last_checkpoint or "").is_file()
    saved = yaml.safe_load((Path(second.run_dir or "") / "config.yaml").read_text())
    assert RunConfig.from_dict(saved) == second.config  # config.yaml is the config the run used
    assert parse_run(["--config", str(Path(second.run_dir or "") / "config.yaml")]) == second.config


def test_train_raises_typed_errors_and_never_exits(run_config: RunConfig, tmp_path: Path) -> None:
    missing = dataclasses.replace(run_config, ckpt_path=str(tmp_path / "nothing.ckpt"))
    with pytest.raises(lm.errors.UsageError, match="no such file"):
        lm.train(missing)
    with pytest.raises(lm.errors.DataError):
        lm.train(dataclasses.replace(run_config, data_dir=str(tmp_path / "empty"), download=False))


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--config", "{bad}"], "train.py: error: --config {bad}: lr must be > 0, got -1.0"),
        (["--config={bad}"], "train.py: error: --config {bad}: lr must be > 0, got -1.0"),
        (["--config", "{bad}", "--lr", "-2"], "train.py: error: --lr must be > 0, got -2.0"),
        (["--lr", "-2", "--config", "{bad}"], "train.py: error: --config {bad}: lr must be > 0, got -1.0"),
        (["--config", "{bad}", "--config", "{good}"], "train.py: error: --max-epochs must be >= 1, got 0"),
    ],
)
def test_a_bad_value_names_where_it_came_from(
    args: list[str], line: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad, good = tmp_path / "bad.yaml", tmp_path / "good.yaml"
    bad.write_text("lr: -1\n")
    good.write_text("lr: 0.1\n")
    paths = {"bad": str(bad), "good": str(good)}
    extra = ["--max-epochs", "0"] if args[-1] == "{good}" else []
    with pytest.raises(SystemExit) as exit_:
        parse_run([*(a.format(**paths) for a in args), *extra])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == line.format(**paths)
