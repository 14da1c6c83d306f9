"""The search space of a sweep: a YAML file of train.py flags to search and flags every trial takes.

```yaml
space:                       # each key a train.py flag (underscores or dashes)
  lr: {low: 1.0e-4, high: 0.3, log: true}      # a float range, log scale
  dropout: {low: 0.0, high: 0.3, step: 0.1}    # linear, on a grid of 0.1
  step_size: {low: 2, high: 6}                 # both bounds integers: an int range
  hidden_sizes: [[128, 64], [256, 128]]        # a list: the choices (also {choices: [...]})
fixed:                       # flags every trial takes (the command line overrides them)
  max_epochs: 5
```

Each hyperparameter becomes one Optuna ``suggest_*`` call. A choice that Optuna cannot store as it is
(a list such as ``[128, 64]``) is stored as its JSON text and turned back into the value for the run.
Nothing here knows the flags: :func:`load_space` takes the names it accepts, and :func:`check_space`
the function that turns a trial's values into its :class:`~lit_mnist.config.RunConfig`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lit_mnist.config import RunConfig
from lit_mnist.errors import ConfigError, UsageError
from lit_mnist.yamltext import YamlRefused, strict_load

if TYPE_CHECKING:
    import optuna

#: A trial's config from its sampled values (the fixed flags and the defaults filled in); raises
#: UsageError or ConfigError for values the run refuses.
Configure = Callable[[Mapping[str, Any]], RunConfig]

#: The top-level keys of a space file.
SPACE_KEYS = ("space", "fixed")
#: The keys of one hyperparameter written as a mapping.
PARAM_KEYS = ("low", "high", "log", "step", "choices")
#: What Optuna stores as a categorical choice as it is; other values are stored as their JSON text.
PLAIN_CHOICE = (type(None), bool, int, float, str)
#: The most points a grid search enumerates (the product of each hyperparameter's values).
GRID_LIMIT = 10_000
SHAPES = "{low: L, high: H} (with log: true or step: S), {choices: [...]}, or a list of choices"


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: a range (``low``..``high``, ``log`` or ``step``) or ``choices``."""

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def kind(self) -> str:
        """``"choice"``, ``"int"`` (both bounds and any step integers) or ``"float"``."""
        if self.choices:
            return "choice"
        ints = all(isinstance(v, int) for v in (self.low, self.high, self.step) if v is not None)
        return "int" if ints else "float"

    def suggest(self, trial: optuna.Trial) -> Any:
        """Ask ``trial`` for this hyperparameter's value (a choice as the value itself, not its JSON)."""
        if self.kind == "choice":
            stored = trial.suggest_categorical(self.name, [encode(c) for c in self.choices])
            return self.decode(stored)
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def decode(self, stored: Any) -> Any:
        """The value of a stored choice (its JSON text for a list); other values as they are."""
        if self.kind != "choice":
            return stored
        for choice in self.choices:
            if encode(choice) == stored:
                return choice
        return stored

    def grid_size(self) -> int | None:
        """How many values :meth:`grid` gives, counted without listing them; None for a continuous range."""
        if self.kind == "choice":
            return len(self.choices)
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return len(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            return None
        return max(0, math.floor((self.high - self.low) / self.step + 1e-9) + 1)

    def grid(self) -> list[Any] | None:
        """The values a grid search tries (as Optuna stores them), or None for a continuous range."""
        if self.kind == "choice":
            return [encode(c) for c in self.choices]
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            return None
        count = math.floor((self.high - self.low) / self.step + 1e-9)
        return [round(self.low + i * self.step, 12) for i in range(count + 1)]

    def corners(self) -> list[Any]:
        """The values that bound the search: each choice, or both ends of the range."""
        return list(self.choices) if self.choices else [self.low, self.high]

    def spec(self) -> dict[str, Any]:
        """The hyperparameter as the space file would write it (stored with the study)."""
        if self.choices:
            return {"choices": list(self.choices)}
        spec: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            spec["log"] = True
        if self.step is not None:
            spec["step"] = self.step
        return spec


def encode(choice: Any) -> Any:
    """A choice as Optuna can store it: plain values as they are, others (lists, mappings) as JSON text."""
    return choice if isinstance(choice, PLAIN_CHOICE) else json.dumps(choice)


@dataclass(frozen=True)
class Space:
    """A parsed space file: the searched hyperparameters and the fixed flags (names with underscores)."""

    path: str
    params: tuple[Param, ...]
    fixed: Mapping[str, Any]

    def spec(self) -> dict[str, Any]:
        """The searched hyperparameters as the file writes them, to compare with a study's."""
        return {p.name: p.spec() for p in self.params}

    def grid(self) -> dict[str, list[Any]]:
        """Optuna's ``GridSampler`` search space; UsageError when a range is continuous or the grid too large.

        The points are counted before any is listed, so a huge range is refused at once.
        """
        points = 1
        for param in self.params:
            size = param.grid_size()
            if size is None:
                raise UsageError(
                    f"--sampler grid: {param.name} is a continuous range in --space {self.path}; give it a "
                    "step (e.g. {low: 0.0, high: 0.3, step: 0.1}) or a list of choices"
                )
            points *= size
        if points > GRID_LIMIT:
            raise UsageError(
                f"--sampler grid: --space {self.path} has {points:,} grid points, more than {GRID_LIMIT:,}; "
                "use a coarser step, fewer values, or --sampler tpe / random"
            )
        grid = {}
        for param in self.params:
            values = param.grid()
            assert values is not None
            grid[param.name] = values
        return grid


def load_space(path: str, flags: Collection[str], reserved: Mapping[str, str]) -> Space:
    """Read and check a space file.

    Args:
        path: The YAML file.
        flags: The names (with underscores) a hyperparameter or fixed flag may have.
        reserved: Flags that the file may not set, each with the reason (e.g. ``log_dir``: the sweep's own).

    Raises:
        UsageError: one line starting ``--space PATH:`` that says what is wrong.
    """

    def fail(message: str) -> UsageError:
        return UsageError(f"--space {path}: {message}")

    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise fail("no such file") from None
    except OSError as err:
        raise fail(f"cannot read it ({err.strerror or err})") from None
    try:
        data = strict_load(text)
    except YamlRefused as err:
        raise fail(str(err)) from None
    except yaml.YAMLError as err:
        raise fail(f"not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict) or not isinstance(data.get("space"), dict) or not data["space"]:
        raise fail(
            "must be a YAML mapping with 'space:' (the flags to search, at least one) and optionally "
            "'fixed:' (flags every trial takes); see examples/sweep.yaml"
        )
    for key in data:
        if key not in SPACE_KEYS:
            raise fail(f"unknown key {key!r}; the keys are {' and '.join(SPACE_KEYS)}")
    fixed_raw = data.get("fixed") or {}
    if not isinstance(fixed_raw, dict):
        raise fail(f"'fixed:' must be a mapping of flag names to values, got {fixed_raw!r}")

    def flag_name(key: Any, where: str) -> str:
        name = str(key).replace("-", "_")
        if name in reserved:
            raise fail(f"{where} {key!r}: {reserved[name]}")
        if name not in flags:
            raise fail(f"{where} {key!r} is not a flag of train.py (see lit-mnist train --help)")
        return name

    fixed = {flag_name(key, "fixed"): value for key, value in fixed_raw.items()}
    params = []
    for key, value in data["space"].items():
        name = flag_name(key, "space")
        if name in fixed:
            raise fail(f"{name} is both searched (space) and fixed; keep one")
        try:
            params.append(parse_param(name, value))
        except ValueError as err:
            raise fail(f"{name}: {err}") from None
    return Space(path, tuple(params), fixed)


def parse_param(name: str, value: Any) -> Param:
    """One hyperparameter from its YAML value; ValueError says what is wrong with it."""
    if isinstance(value, list):
        value = {"choices": value}
    if not isinstance(value, dict):
        raise ValueError(f"expected {SHAPES}; got {value!r}")
    unknown = [k for k in value if k not in PARAM_KEYS]
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; expected {SHAPES}")
    if "choices" in value:
        if set(value) != {"choices"}:
            raise ValueError("choices cannot be combined with low, high, log or step")
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"choices must be a non-empty list, got {choices!r}")
        if len({json.dumps(encode(c)) for c in choices}) != len(choices):
            raise ValueError(f"choices must differ from each other, got {choices!r}")
        return Param(name, choices=tuple(choices))
    if "low" not in value or "high" not in value:
        raise ValueError(f"a range needs both low and high; expected {SHAPES}")
    low, high = number(value["low"], "low"), number(value["high"], "high")
    step = None if value.get("step") is None else number(value["step"], "step")
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"log must be true or false, got {log!r}")
    if low > high:
        raise ValueError(f"low {low} is greater than high {high}")
    if log and low <= 0:
        raise ValueError(f"a log range needs low > 0, got {low}")
    if step is not None and step <= 0:
        raise ValueError(f"step must be > 0, got {step}")
    if log and step is not None:
        raise ValueError("log and step cannot be combined (Optuna samples a log range continuously)")
    if step is not None and abs((high - low) / step - round((high - low) / step)) > 1e-9:
        raise ValueError(f"high - low ({high} - {low}) must be a whole number of steps of {step}")
    return Param(name, low=low, high=high, log=log, step=step)


def number(value: Any, key: str) -> int | float:
    """A bound or step as a number; YAML 1.1 reads ``1e-4`` (no dot) as text, so numeric text is accepted."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{key} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return value


def describe(err: BaseException) -> str:
    """One line naming the flag, for the errors that a trial's config refuses its values with."""
    if isinstance(err, ConfigError):
        return f"{err.flag} {err.message}"
    return " ".join(str(err).split())


def check_space(space: Space, configure: Configure) -> None:
    """The fixed flags, and each bound and choice of the space with them, are runs that train.py accepts.

    Each value is checked with the others at their defaults, so that an error names its cause.

    Raises:
        UsageError: one line naming the hyperparameter or flag and the value refused.
    """
    try:
        configure({})
    except (UsageError, ConfigError) as err:
        raise UsageError(
            f"{describe(err)} (a fixed flag: --space {space.path} or the command line)"
        ) from None
    for param in space.params:
        for value in param.corners():
            try:
                configure({param.name: value})
            except (UsageError, ConfigError) as err:
                raise UsageError(
                    f"--space {space.path}: {param.name} {value!r} is refused: {describe(err)}"
                ) from None
