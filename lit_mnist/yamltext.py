"""A strict reading of a user's YAML file (``--config``, ``--space``): no aliases, no duplicate keys.

An alias (``*name``) lets a 1 KB file expand into gigabytes (a "billion laughs"), and a duplicate
key silently keeps only the last value; a config file needs neither, so both are refused here, as
the file is composed and before anything expands it.
"""

from __future__ import annotations

from typing import Any

import yaml


class YamlRefused(ValueError):
    """A YAML text uses an alias or repeats a key; the message says which and where (one line)."""


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that raises :class:`YamlRefused` at an alias or a mapping's repeated key."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YamlRefused(
                f"YAML aliases (*{event.anchor}, line {event.start_mark.line + 1}) are not accepted in a "
                "config file; write the values out"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: {...}`: the base loader merges it
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base loader says so
                continue
            if repeated:
                raise YamlRefused(f"duplicate key {key!r} (line {key_node.start_mark.line + 1}); keep one")
        return super().construct_mapping(node, deep=deep)


def strict_load(text: str) -> Any:
    """``yaml.safe_load(text)``, refusing aliases and duplicate keys.

    Raises:
        YamlRefused: an alias or a repeated key, in one line.
        yaml.YAMLError: text that is not valid YAML.
    """
    return yaml.load(text, Loader=StrictLoader)
