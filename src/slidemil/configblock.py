"""Config blocks as dataclasses: unknown keys are an error that names the block and the known keys."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def from_block(cls: type[T], d: dict[str, Any], block: str) -> T:
    """cls(**d), after checking every key of config block `block` is a field of cls (a typo such as
    `epoch:` would otherwise fall back to the default silently)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {block} keys {sorted(unknown)}; known: {sorted(names)}")
    return cls(**d)
