"""One strict loader for every config block: a dict becomes its dataclass, nested blocks included."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def from_block(cls: type[T], d: dict[str, Any] | None, block: str) -> T:
    """cls(**d), nested dataclass fields built from their dicts the same way; `block`: the dotted config key
    ("" for the whole config).

    Raises ValueError naming the block, the unknown keys and the known keys: a typo such as
    `epoch:` would otherwise fall back to the default silently."""
    d = dict(d or {})
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = set(d) - set(names)
    if unknown:
        raise ValueError(f"config {block or '(top level)'}: unknown keys {sorted(unknown)}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    for name, value in d.items():
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            d[name] = from_block(hints[name], value, ".".join(filter(None, (block, name))))
    try:
        return cls(**d)
    except TypeError as e:  # a required key is missing
        raise ValueError(f"config {block or '(top level)'}: {e}") from e


def entries(cls: type[T], d: dict[str, Any] | None, block: str) -> dict[str, T]:
    """A block of named entries (`pretrain`, `hnm`), each loaded strictly as cls."""
    return {str(name): from_block(cls, entry, f"{block}.{name}") for name, entry in (d or {}).items()}
