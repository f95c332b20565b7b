"""One strict loader for every config block: a dict becomes its dataclass, nested blocks included."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

T = TypeVar("T")


class UnknownConfigKey(ValueError):
    """A key no dataclass field of its block has: a typo such as `tile_sise`, which would otherwise fall
    back to the default silently (or, in the schema's words, end in a dump of the whole block)."""

    def __init__(self, block: str, unknown: list[str], known: list[str]):
        self.block, self.unknown, self.known = block, sorted(unknown), sorted(known)
        guess = self.suggestion()
        super().__init__(f"config {block or '(top level)'}: unknown keys {self.unknown}; known: {self.known}"
                         + (f"; did you mean {guess}?" if guess else ""))

    @property
    def key(self) -> str:
        """The first unknown key's dotted path, e.g. tile.tile_sise."""
        return ".".join(filter(None, (self.block, self.unknown[0])))

    def suggestion(self) -> str | None:
        """The known key closest to the first unknown one (difflib), or None when none is close."""
        close = difflib.get_close_matches(self.unknown[0], self.known, n=1, cutoff=0.6)
        return close[0] if close else None

    def one_line(self, files: Iterable[str | Path] = ()) -> str:
        """`<file>: unknown config key tile.tile_sise; did you mean tile_size?`, naming the config file
        that holds the key (the last one given that does, as later files override earlier ones)."""
        where = key_file(self.block, self.unknown[0], files)
        guess = self.suggestion()
        hint = f"did you mean {guess}?" if guess else f"the keys of {self.block or 'the top level'}: {', '.join(self.known)}"
        return f"{where or 'config'}: unknown config key {self.key}; {hint}"


def key_file(block: str, key: str, files: Iterable[str | Path]) -> str | None:
    """The last of the YAML `files` where `block`.`key` is written (block "encoders[0].x" style paths
    included), or None."""
    import re

    import yaml

    found = None
    for f in files:
        try:
            node: Any = yaml.safe_load(Path(f).read_text())
        except (OSError, yaml.YAMLError):
            continue
        for part in [p for p in re.split(r"\.|\[(\d+)\]", block) if p] if block else []:
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                node = None
                break
        if isinstance(node, dict) and key in node:
            found = str(f)
    return found


def from_block(cls: type[T], d: dict[str, Any] | None, block: str) -> T:
    """cls(**d), nested dataclass fields built from their dicts the same way; `block`: the dotted config key
    ("" for the whole config).

    Raises ValueError naming the block, the unknown keys and the known keys: a typo such as
    `epoch:` would otherwise fall back to the default silently."""
    d = dict(d or {})
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = set(d) - set(names)
    if unknown:
        raise UnknownConfigKey(block, list(unknown), names)
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
