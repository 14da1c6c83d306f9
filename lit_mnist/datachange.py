"""What differs between the data a checkpoint was trained on and the data at hand, in a few words.

A checkpoint records its dataset's class names and a fingerprint of its files
(:class:`lit_mnist.checkpoints.DatasetRecord`, :meth:`lit_mnist.data.TensorDataModule.fingerprint`). Resuming
(:func:`lit_mnist.checkpoints.check_resumable`) and ``evaluate`` compare them with the data they are given:
:func:`class_change` says which classes are gone, new or moved (a class is its index, so that refuses a
resume), :func:`data_change` which files differ and by how many (a note: the classes mean what they meant).
Every name read from a file is printed escaped (:func:`lit_mnist.runtime.printable`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lit_mnist.runtime import printable

__all__ = ["class_change", "data_change"]


def _quoted(names: Sequence[Any], limit: int = 4) -> str:
    shown = ", ".join(f'"{printable(str(n))}"' for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def class_change(saved: Sequence[Any], now: Sequence[Any], folders: bool = False) -> str | None:
    """What changed from the classes ``saved`` to ``now``, in a few words, or ``None`` when they are the same.

    ``class folder "9" is gone and "00" is new``, ``classes "a", "b" are gone``, ``the same classes in another
    order: ...``. Names are printed escaped (:func:`lit_mnist.runtime.printable`).

    Args:
        saved: The class names a checkpoint records.
        now: The class names of the data at hand.
        folders: The classes are a folder dataset's class folders (the words say so).
    """
    saved, now = [str(n) for n in saved], [str(n) for n in now]
    if saved == now:
        return None
    one, many = ("class folder", "class folders") if folders else ("class", "classes")
    gone = [n for n in saved if n not in now]
    new = [n for n in now if n not in saved]
    if not gone and not new:
        return f"the same {many} in another order: {_quoted(now, 10)} (it was {_quoted(saved, 10)})"
    words = []
    if gone:
        words.append(
            f"{one if len(gone) == 1 else many} {_quoted(gone)} {'is' if len(gone) == 1 else 'are'} gone"
        )
    if new:
        noun = "" if gone else f"{one if len(new) == 1 else many} "
        words.append(f"{noun}{_quoted(new)} {'is' if len(new) == 1 else 'are'} new")
    return " and ".join(words)


def data_change(saved: Any, now: Any) -> str | None:
    """How the files of a dataset differ from those it had when a checkpoint was saved, in a few words, or
    ``None`` when they are the same or either fingerprint is unknown (:meth:`TensorDataModule.fingerprint`).

    ``training images: 49 files, 48 before ("cat" 17, 16 before)``; ``train-images-idx3-ubyte: 60000 items,
    600 before``; ``test images: the same 12 files, other names or sizes``.
    """
    if (
        not isinstance(saved, Mapping)
        or not isinstance(now, Mapping)
        or saved.get("digest") == now.get("digest")
    ):
        return None
    old, new = saved.get("parts") or {}, now.get("parts") or {}
    words = [
        _part_change(str(name), old.get(name), new.get(name))
        for name in [*old, *(n for n in new if n not in old)]
        if not (isinstance(old.get(name), Mapping) and isinstance(new.get(name), Mapping))
        or old[name].get("digest") != new[name].get("digest")
    ]
    return "; ".join(words[:3] + ([f"and {len(words) - 3} more"] if len(words) > 3 else [])) or "other files"


def _part_change(name: str, old: Any, new: Any) -> str:
    """How one part of a fingerprint (a folder's files, a raw file) changed."""
    if not isinstance(old, Mapping):
        return f"{name} are new" if name.endswith("s") else f"{name} is new"
    if not isinstance(new, Mapping):
        return f"{name} are gone" if name.endswith("s") else f"{name} is gone"
    for unit in ("files", "items"):
        if unit in old and unit in new:
            if old[unit] == new[unit]:
                other = "other names or sizes" if unit == "files" else "other contents (another MD5)"
                return f"{name}: the same {new[unit]} {unit}, {other}"
            counted = f"{name}: {new[unit]} {unit}, {old[unit]} before"
            before, after = old.get("per_class") or {}, new.get("per_class") or {}
            changed = [c for c in after if c in before and after[c] != before[c]]
            detail = ", ".join(f'"{printable(str(c))}" {after[c]}, {before[c]} before' for c in changed[:3])
            return counted + (f" ({detail}{', ...' if len(changed) > 3 else ''})" if detail else "")
    return f"{name}: other contents"
