"""Small atomic file writers: a killed job never leaves a complete-looking half-written file."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_png(image: np.ndarray, path: str | Path) -> None:
    """Write an image array as PNG via a temporary sibling, renamed when complete."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.png")
    Image.fromarray(image).save(tmp)
    tmp.replace(path)
