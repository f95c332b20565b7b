"""Per-slide QC pictures a person can judge: a ~1000 px thumbnail with the tissue mask outlined,
excluded pen ink and blur tinted, kept tiles outlined, and a legend naming each colour.

A picture is a panel (the thumbnail with overlays, `panel_size` pixels, `downsample` level-0 px
per pixel, both recorded in the mask sidecar) above a legend strip. The tile stage draws its
tiles on the mask stage's panel, so it needs neither the slide nor the ink and blur maps again.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

QC_LONG_SIDE = 1000  # px on the panel's long side (less for a smaller slide): ink, blur and tiles visible
MIN_BOX_PX = 5  # tiles smaller than this on the panel are filled, not outlined (outlines would merge)

RGB = tuple[int, int, int]
COLOURS: dict[str, RGB] = {"tissue": (0, 170, 0), "ink": (220, 0, 0), "blur": (255, 140, 0), "tiles": (40, 60, 235)}
TINT = {"tissue": 0.15, "ink": 0.5, "blur": 0.5, "tiles": 0.35}  # overlay opacity


def resize_nearest(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A 2-D map [h, w] resampled to `shape` (H, W) by nearest neighbour (masks stay boolean)."""
    m = np.asarray(m)
    if m.shape[:2] == tuple(shape):
        return m
    rows = np.minimum((np.arange(shape[0]) + 0.5) * m.shape[0] / shape[0], m.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * m.shape[1] / shape[1], m.shape[1] - 1).astype(int)
    return m[rows[:, None], cols[None, :]]


def _line_px(shape: tuple[int, ...]) -> int:
    return max(1, round(max(shape[:2]) / 500))  # 2 px at 1000 px: visible without hiding the tissue


def _tint(out: np.ndarray, where: np.ndarray, name: str) -> None:
    out[where] = (1 - TINT[name]) * out[where] + TINT[name] * np.array(COLOURS[name], np.float32)


def mask_panel(rgb: np.ndarray, tissue: np.ndarray, excluded: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """The thumbnail rgb [H, W, 3] uint8 with excluded regions tinted and the tissue outlined.

    `tissue` and the `excluded` maps ('ink', 'blur') may be at any resolution (the mask's); they are
    resampled to the thumbnail's.
    """
    shape = rgb.shape[:2]
    out = rgb.astype(np.float32)
    tissue = resize_nearest(np.asarray(tissue, bool), shape)
    for name, where in (excluded or {}).items():
        where = resize_nearest(np.asarray(where, bool), shape) & ~tissue
        _tint(out, where, name)
        out[where & ~ndi.binary_erosion(where, iterations=1)] = COLOURS[name]  # so a thin stroke still shows
    _tint(out, tissue, "tissue")
    out[tissue & ~ndi.binary_erosion(tissue, iterations=_line_px(shape))] = COLOURS["tissue"]
    return out.astype(np.uint8)


def draw_tiles(panel: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """`panel` with tile rectangles [x0, y0, x1, y1] (panel px) outlined, or filled where too small."""
    out = panel.astype(np.float32)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not len(boxes):
        return panel.copy()
    H, W = panel.shape[:2]
    b = np.rint(boxes).astype(int)
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, W - 1)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, H - 1)
    if float(np.median(boxes[:, 2] - boxes[:, 0])) < MIN_BOX_PX:
        covered = np.zeros((H, W), bool)
        for x0, y0, x1, y1 in b:
            covered[y0 : y1 + 1, x0 : x1 + 1] = True
        _tint(out, covered, "tiles")
        return out.astype(np.uint8)
    colour = COLOURS["tiles"]
    for x0, y0, x1, y1 in b:
        out[y0, x0 : x1 + 1] = out[y1, x0 : x1 + 1] = colour
        out[y0 : y1 + 1, x0] = out[y0 : y1 + 1, x1] = colour
    return out.astype(np.uint8)


def legend_entries(meta: dict[str, Any], n_tiles: int | None = None) -> list[tuple[str, str]]:
    """(colour name, label) for each overlay, with the fractions of the mask sidecar `meta`."""
    entries = [("tissue", f"tissue mask outline ({100 * meta.get('tissue_fraction', 0.0):.1f}% of slide)"),
               ("ink", f"excluded: pen ink ({100 * meta.get('ink_fraction', 0.0):.1f}%)"),
               ("blur", f"excluded: out of focus ({100 * meta.get('blur_fraction', 0.0):.1f}%)")]
    if n_tiles is not None:
        entries.append(("tiles", f"kept tiles ({n_tiles})"))
    return entries


def legend_strip(width: int, entries: list[tuple[str, str]], title: str) -> np.ndarray:
    """A white strip [h, width, 3] uint8 with `title` and one swatch per (colour name, label)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global state, no display
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    ncol = max(1, min(len(entries), width // 240))
    height = 30 + 20 * math.ceil(len(entries) / ncol)
    fig = Figure(figsize=(width / 100, height / 100), dpi=100, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    fig.text(0.01, 1 - 6 / height, title, va="top", ha="left", fontsize=9)
    handles = []
    for name, label in entries:
        c = np.array(COLOURS[name]) / 255
        face = "none" if name == "tiles" else (1 - TINT[name]) + TINT[name] * c
        handles.append(Patch(facecolor=face, edgecolor=c, linewidth=2, label=label))
    fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 0), ncol=ncol, fontsize=8, frameon=False,
               handlelength=1.5, columnspacing=1.2, borderaxespad=0.2)
    canvas.draw()
    strip = np.asarray(canvas.buffer_rgba())[..., :3]
    out = np.full((height, width, 3), 255, np.uint8)  # the canvas may round a pixel off either side
    h, w = min(height, strip.shape[0]), min(width, strip.shape[1])
    out[:h, :w] = strip[:h, :w]
    return out


def compose(panel: np.ndarray, entries: list[tuple[str, str]], title: str) -> np.ndarray:
    """The QC picture: `panel` on top, the legend strip below it."""
    return np.concatenate([panel, legend_strip(panel.shape[1], entries, title)], axis=0)


def panel_long_side(slide_size: tuple[int, int]) -> int:
    """The panel's long side for a level-0 slide of `slide_size` (w, h): QC_LONG_SIDE, or the slide's."""
    return max(1, min(QC_LONG_SIDE, max(slide_size)))


def mask_picture(rgb: np.ndarray, tissue: np.ndarray, excluded: dict[str, np.ndarray], meta: dict[str, Any],
                 title: str) -> np.ndarray:
    """The mask stage's QC picture: thumbnail + tissue outline + excluded ink/blur, with a legend."""
    return compose(mask_panel(rgb, tissue, excluded), legend_entries(meta), title)


def tile_picture(mask_qc_png: str | Path, mask_meta: dict[str, Any], coords: np.ndarray, tile_size_level0: float,
                 title: str) -> np.ndarray:
    """The tile stage's QC picture: the mask stage's panel with the kept tiles drawn, and a legend.

    coords: int [N, 2] level-0 (x, y) of the tiles' top-left corners. A mask QC picture without a
    recorded panel (written before QC pictures had legends) is used whole, at the mask's scale.
    """
    from PIL import Image

    picture = np.asarray(Image.open(mask_qc_png).convert("RGB"))
    w, h = mask_meta.get("qc_size") or (picture.shape[1], picture.shape[0])
    downsample = mask_meta.get("qc_downsample") or mask_meta["downsample"]
    panel = picture[:h, :w]
    c = np.asarray(coords, np.float64).reshape(-1, 2) / downsample
    boxes = np.concatenate([c, c + tile_size_level0 / downsample], axis=1)
    return compose(draw_tiles(panel, boxes), legend_entries(mask_meta, len(c)), title)

