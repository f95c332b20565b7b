"""The one atomic writer: a killed job never leaves a complete-looking half-written file or store.

Every output (tables, PNGs, JSON sidecars, checkpoints, graphs, Zarr stores) is written to a
temporary sibling inside `atomic_path` and renamed onto its final name when the block completes.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np


def temp_sibling(path: str | Path, pid: int | None = None) -> Path:
    """The temporary name `atomic_path` writes `path` under in process `pid` (default: this one).

    Hidden, in the same directory (so the rename is atomic), and ending in the same suffix, so
    writers that infer the format from the name (matplotlib, numpy, Pillow) write what `path` says.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid() if pid is None else pid}{path.suffix}")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling to write a file or create a directory at, renamed onto `path` on success.

    If the block raises, the temporary file or directory is removed. A directory (a Zarr store)
    replaces an existing `path` whole, and temporary directories that killed jobs left beside it
    are removed then (they can be as large as the store; stray temp files are small and hidden,
    and globbing a folder of thousands of outputs per write would cost more than they do).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        if tmp.is_dir():
            if path.exists():
                _remove(path)
            tmp.rename(path)
            for stale in glob.glob(glob.escape(str(path.parent / f".{path.name}.tmp-")) + "*"):  # dead jobs' stores
                _remove(Path(stale))
        else:
            tmp.replace(path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def save_png(image: np.ndarray, path: str | Path) -> None:
    """Write an image array [H, W] or [H, W, 3|4] uint8 as PNG, atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def write_text(text: str, path: str | Path) -> None:
    """Write a text file (a JSON sidecar, a log-like summary), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
