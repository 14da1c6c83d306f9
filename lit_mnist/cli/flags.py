"""The flags of a run, derived from :class:`~lit_mnist.config.RunConfig`: one ``--name`` per field.

Each field gives its flag the type (jsonargparse checks it, a ``Literal`` lists the choices), the
default, the ``--help`` group and line; booleans take ``--name`` / ``--no-name``, tuples one or more
values. ``--config FILE.yaml`` takes the fields' names as keys (dashes or underscores), and flags
after it override it; ``--recipe NAME`` reads ``lit_mnist/recipes/NAME.yaml`` the same way, before any other
flag or config file wherever it is given.
``train`` and ``sweep`` share the parser.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, Namespace

from lit_mnist.cli.common import one_line, usage_exit
from lit_mnist.config import GROUPS, RunConfig
from lit_mnist.errors import ConfigError, UsageError
from lit_mnist.recipes import RECIPES, recipe_path, recipes_table
from lit_mnist.yamltext import YamlRefused, strict_load

_HINTS = typing.get_type_hints(RunConfig)
FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))


def flag(name: str) -> str:
    """A field's command-line spelling: ``max_epochs`` -> ``--max-epochs``."""
    return "--" + name.replace("_", "-")


def run_parser(
    prog: str = "train.py", description: str = "Train an MNIST-family classifier with PyTorch Lightning."
) -> ArgumentParser:
    """The parser of a run's flags, grouped for ``--help`` as :data:`~lit_mnist.config.GROUPS`."""
    parser = ArgumentParser(
        prog=prog,
        description=description,
        exit_on_error=False,
        default_env=False,
        print_config="--print-config",
    )
    parser.add_argument(
        "--config", action=ActionConfigFile, help="A YAML file whose keys are these flags' names."
    )
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for f in dataclasses.fields(RunConfig):
        hint, text = _HINTS[f.name], f.metadata["help"]
        group = groups[f.metadata["group"]]
        if f.name == "recipe":
            text = (
                f"A named recipe ({', '.join(RECIPES)}), read like --config from lit_mnist/recipes/NAME.yaml where "
                "it stands (flags after it override it); list prints them with what each reached."
            )
        if hint is bool:
            group.add_argument(
                flag(f.name), action=ActionYesNo(no_prefix="no-"), default=f.default, help=text
            )
        elif typing.get_origin(hint) is tuple:
            default: tuple[Any, ...] = f.default  # type: ignore[assignment]
            group.add_argument(
                flag(f.name), type=typing.get_args(hint)[0], nargs="+", default=list(default), help=text
            )
        elif f.name == "fast_dev_run":
            group.add_argument(flag(f.name), type=hint, nargs="?", const=1, default=f.default, help=text)
        else:
            group.add_argument(flag(f.name), type=hint, default=f.default, help=text)
    return parser


def config_from(namespace: Namespace) -> RunConfig:
    """The :class:`RunConfig` of a parsed namespace (its extra keys, such as ``config``, left out).

    Raises:
        ConfigError: a value the config refuses.
    """
    return RunConfig(**{name: namespace[name] for name in FIELDS if name in namespace})


def parse_run(
    argv: Sequence[str] | None = None, prog: str = "train.py", parser: ArgumentParser | None = None
) -> RunConfig:
    """Parse and check ``argv`` into a config; on a usage error print one line and exit with status 2."""
    namespace = parse_namespace(argv, prog, parser)
    try:
        return config_from(namespace)
    except ConfigError as err:
        usage_exit(prog, config_error(err, list(sys.argv[1:] if argv is None else argv)))


def config_error(err: ConfigError, args: Sequence[str]) -> str:
    """``err`` as one line naming where its value came from: the flag, or the ``--config`` file that gave it
    last (``--config run.yaml: lr must be > 0, got -1``); the flag when neither says (a default, a recipe)."""
    source = err.flag
    names = {err.key, err.key.replace("_", "-")}
    for i, arg in enumerate(args):
        if arg == err.flag or arg.startswith(err.flag + "="):
            source = err.flag
        elif (arg == "--config" and i + 1 < len(args)) or arg.startswith("--config="):
            path = args[i + 1] if arg == "--config" else arg.split("=", 1)[1]
            if names & _keys_of(path):
                source = f"--config {path}: {err.key}"
    return f"{source} {err.message}"


def _keys_of(path: str) -> set[str]:
    """The top-level keys of a config file (empty when it cannot be read: the parser said so already)."""
    try:
        loaded = strict_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, YamlRefused, yaml.YAMLError):
        return set()
    return {str(k) for k in loaded} if isinstance(loaded, dict) else set()


def parse_namespace(argv: Sequence[str] | None, prog: str, parser: ArgumentParser | None = None) -> Namespace:
    """``argv`` parsed by :func:`run_parser` (or ``parser``), recipes read, nulls refused; usage errors exit 2."""
    parser = parser or run_parser(prog)
    args, recipe = expand_recipe(list(sys.argv[1:] if argv is None else argv), prog)
    try:
        check_config_files(args)
        namespace = parser.parse_args(args)
        if (
            namespace.recipe is not None and recipe is None
        ):  # `recipe: NAME` in a --config file: read it first
            args, recipe = expand_recipe(["--recipe", str(namespace.recipe), *args], prog)
            namespace = parser.parse_args(args)
        check_not_null(namespace, parser)
    except UnicodeDecodeError as err:  # a binary file given as --config
        usage_exit(
            prog, f"--config must be a YAML text file; it holds bytes that are not UTF-8 text ({err.reason})"
        )
    except ArgumentError as err:
        usage_exit(prog, one_line(str(err), argv))
    except UsageError as err:
        usage_exit(prog, str(err))
    return namespace


def check_config_files(args: Sequence[str]) -> None:
    """Read each ``--config FILE`` in ``args`` strictly before jsonargparse does: no aliases, no repeated keys.

    An alias can expand a 1 KB file into gigabytes (a "billion laughs"); other problems (a missing file,
    invalid YAML) are left to the parser, which reports them as before.

    Raises:
        UsageError: ``--config FILE: ...``, one line.
        UnicodeDecodeError: a file that is not UTF-8 text.
    """
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        else:
            continue
        path = Path(value)
        try:
            text = path.read_text() if path.is_file() else value  # jsonargparse also takes inline YAML
        except OSError:
            continue
        try:
            strict_load(text)
        except YamlRefused as err:
            raise UsageError(f"--config {value}: {err}") from None
        except yaml.YAMLError:
            continue


def expand_recipe(args: list[str], prog: str) -> tuple[list[str], str | None]:
    """``--recipe NAME`` -> ``--config <lit_mnist/recipes/NAME.yaml>`` first, wherever it was given, so that every
    other flag and config file overrides the recipe (a recipe is where a run starts); ``--recipe list`` prints them.
    One recipe at most: two would mix their settings.

    Returns:
        The arguments to parse and the recipe's name, or None.
    """
    expanded: list[str] = []
    recipe: str | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        if not (arg == "--recipe" or arg.startswith("--recipe=")):
            expanded.append(arg)
            i += 1
            continue
        if arg == "--recipe":
            if i + 1 >= len(args):
                usage_exit(prog, f"--recipe needs a name: {', '.join(RECIPES)}, or list")
            name, i = args[i + 1], i + 2
        else:
            name, i = arg.split("=", 1)[1], i + 1
        if name == "list":
            print(recipes_table())
            raise SystemExit(0)
        try:
            recipe_path(name)
        except KeyError:
            usage_exit(
                prog, f"--recipe {name!r} is not a recipe; choose one of {', '.join(RECIPES)} (--recipe list)"
            )
        if recipe is not None and name != recipe:
            usage_exit(
                prog,
                f"--recipe {recipe} and --recipe {name}: give one recipe (a run starts from one); "
                "change its settings with flags or a --config file",
            )
        recipe = name
    if recipe is None:
        return expanded, None
    return ["--config", str(recipe_path(recipe)), f"--recipe={recipe}", *expanded], recipe


def check_not_null(namespace: Namespace, parser: ArgumentParser) -> None:
    """Refuse ``null`` for a flag that has a value by default: a config file's ``lr: null``.

    Raises:
        UsageError: naming the flag.
    """
    for key, default in parser.get_defaults().items():
        value: Any = namespace.get(key, default)
        if default is not None and key != "config" and value is None:
            raise UsageError(
                f"{flag(key)} cannot be null (a config file's '{key}: null'); "
                f"give a value, e.g. {default!r}, or leave the key out for the default"
            )
