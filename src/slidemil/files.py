"""Small atomic file writers: a killed job never leaves a complete-looking half-written file."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np


def save_png(image: np.ndarray, path: str | Path) -> None:
    """Write an image array as PNG via a temporary sibling, renamed when complete."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.png")
    Image.fromarray(image).save(tmp)
    tmp.replace(path)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling to write to, renamed onto `path` only when the block completes.

    The temporary name keeps the suffix, so writers that infer the format from it (matplotlib,
    numpy) write what `path` says.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
