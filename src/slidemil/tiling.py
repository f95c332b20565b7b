"""Tiling a slide on one global grid at a target mpp into a sharded, JPEG-per-tile Zarr store.

The grid has its origin at level-0 (0, 0) and a step of one tile at the target mpp, so grid
position (col, row) means the same place for every tissue piece of the slide (neighbour graphs
rely on that). Only whole tiles inside the slide are used.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zarr

from slidemil import __version__
from slidemil.slide import ReadPlan, SlideError, open_slide, plan_read, rgba_to_rgb, slide_mpp
from slidemil.store import atomic_dir, create_tile_arrays, write_index_arrays

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileParams:
    target_mpp: float = 1.0  # microns per pixel of the stored tiles
    tile_size: int = 64  # tile edge at target mpp, px
    min_tissue: float = 0.5  # keep a tile when this fraction of it is tissue
    jpeg_quality: int = 90  # JPEG quality of stored tiles
    shard_tiles: int = 256  # tiles per shard file
    strip_tiles: int = 32  # tiles read per OpenSlide call (bounds memory)
    allow_upsample: bool = False  # permit target_mpp finer than the scan


def tile_fractions(mask: np.ndarray, mask_downsample: float, step0: float, n_cols: int, n_rows: int) -> np.ndarray:
    """Tissue fraction [n_rows, n_cols] of every grid cell, from a mask at `mask_downsample`.

    Each mask pixel votes for the cell holding its centre; cells smaller than a mask pixel (no
    centre falls inside) take the mask value at their own centre.
    """
    mh, mw = mask.shape
    cy = ((np.arange(mh) + 0.5) * mask_downsample / step0).astype(np.int64)
    cx = ((np.arange(mw) + 0.5) * mask_downsample / step0).astype(np.int64)
    ok_y, ok_x = cy < n_rows, cx < n_cols
    m = mask[np.ix_(ok_y, ok_x)].astype(np.float64)
    idx = (cy[ok_y][:, None] * n_cols + cx[ok_x][None, :]).ravel()
    total = np.bincount(idx, weights=m.ravel(), minlength=n_rows * n_cols)
    count = np.bincount(idx, minlength=n_rows * n_cols).astype(np.float64)
    frac = np.divide(total, count, out=np.zeros_like(total), where=count > 0).reshape(n_rows, n_cols)
    empty = (count == 0).reshape(n_rows, n_cols)
    if empty.any():
        rr, cc = np.nonzero(empty)
        my = np.clip(((rr + 0.5) * step0 / mask_downsample).astype(int), 0, mh - 1)
        mx = np.clip(((cc + 0.5) * step0 / mask_downsample).astype(int), 0, mw - 1)
        frac[rr, cc] = mask[my, mx]
    return frac


def select_tiles(dims: tuple[int, int], step0: float, mask: np.ndarray, mask_downsample: float,
                 min_tissue: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid (col, row) and level-0 (x, y) of whole tiles with tissue fraction >= min_tissue."""
    w, h = dims
    n_cols, n_rows = int(w // step0), int(h // step0)
    if n_cols == 0 or n_rows == 0:
        return np.zeros((0, 2), np.int32), np.zeros((0, 2), np.int32)
    frac = tile_fractions(mask, mask_downsample, step0, n_cols, n_rows)
    rows, cols = np.nonzero(frac >= min_tissue)  # row-major: tiles ordered by (row, col)
    grid = np.stack([cols, rows], axis=1).astype(np.int32)
    coords = np.round(grid * step0).astype(np.int32)
    return grid, coords


def _runs(grid: np.ndarray, max_len: int) -> list[tuple[int, int]]:
    """Split tile indices into runs of consecutive columns on one row, at most max_len long."""
    runs, start = [], 0
    for i in range(1, len(grid) + 1):
        if (i == len(grid) or grid[i, 1] != grid[start, 1] or grid[i, 0] != grid[i - 1, 0] + 1
                or i - start >= max_len):
            runs.append((start, i))
            start = i
    return runs


def read_tiles(slide, plan: ReadPlan, grid: np.ndarray, coords: np.ndarray, tile_size: int,
               strip_tiles: int):
    """Yield (index, tile uint8 [T,T,3]) in order, reading a strip of tiles per OpenSlide call."""
    from PIL import Image

    step_level = tile_size * plan.target_downsample / plan.level_downsample  # tile edge at the level
    side = int(math.ceil(step_level))
    for a, b in _runs(grid, strip_tiles):
        x0, y0 = int(coords[a, 0]), int(coords[a, 1])
        width = int(math.ceil((coords[b - 1, 0] - x0) / plan.level_downsample)) + side
        strip = rgba_to_rgb(slide.read_region((x0, y0), plan.level, (width, side)))
        for i in range(a, b):
            off = int(round((coords[i, 0] - x0) / plan.level_downsample))
            tile = strip.crop((off, 0, off + side, side))
            if side != tile_size:
                tile = tile.resize((tile_size, tile_size), Image.Resampling.BILINEAR, reducing_gap=2.0)
            yield i, np.asarray(tile)


def load_mask(mask_png: str | Path) -> tuple[np.ndarray, dict]:
    """A mask PNG written by the mask stage and its JSON sidecar (downsample, area)."""
    from PIL import Image

    mask_png = Path(mask_png)
    meta = json.loads(mask_png.with_suffix(".json").read_text())
    return np.asarray(Image.open(mask_png)) > 0, meta


def tile_slide(slide_path: str | Path, mask_png: str | Path, out: str | Path, params: TileParams,
               slide_id: str, mpp_override: float | None = None, progress: bool = True) -> dict:
    """Tile one slide into `out` (a Zarr v3 group), atomically. Returns the store's attrs."""
    from tqdm import tqdm

    slide_path = Path(slide_path)
    mask, mask_meta = load_mask(mask_png)
    slide = open_slide(slide_path)
    mpp = slide_mpp(slide, slide_path, mpp_override)
    plan = plan_read(slide.level_downsamples, mpp, params.target_mpp, slide_path, params.allow_upsample)
    step0 = params.tile_size * plan.target_downsample
    grid, coords = select_tiles(slide.dimensions, step0, mask, mask_meta["downsample"], params.min_tissue)
    stat = slide_path.stat()
    attrs = {
        "slide_id": slide_id, "source_path": str(slide_path), "source_size": stat.st_size,
        "source_mtime": stat.st_mtime, "slide_mpp": mpp, "mpp_source": mask_meta.get("mpp_source"),
        "target_mpp": params.target_mpp, "tile_size": params.tile_size, "stride": params.tile_size,
        "tile_size_level0": step0, "level": plan.level, "level_downsample": plan.level_downsample,
        "resize_scale": plan.scale, "width": slide.dimensions[0], "height": slide.dimensions[1],
        "n_tiles": len(grid), "status": "ok" if len(grid) else "empty", "params": asdict(params),
        "slidemil_version": __version__,
    }
    if not len(grid):
        log.warning("%s: no tissue tiles (min_tissue=%s); writing an empty store flagged 'empty'",
                    slide_id, params.min_tissue)
    log.info("%s: %d tiles at %.3f mpp from level %d (downsample %.3f, resize x%.3f)", slide_id,
             len(grid), params.target_mpp, plan.level, plan.level_downsample, plan.scale)
    with atomic_dir(out) as tmp:
        g = zarr.open_group(tmp, mode="w", zarr_format=3)
        tiles = create_tile_arrays(g, len(grid), params.tile_size, params.shard_tiles, params.jpeg_quality)
        write_index_arrays(g, coords, grid)
        buf = np.empty((min(params.shard_tiles, max(len(grid), 1)), params.tile_size, params.tile_size, 3), np.uint8)
        start = 0
        bar = tqdm(total=len(grid), desc=f"tile {slide_id}", unit="tile", disable=not progress, mininterval=2)
        for i, tile in read_tiles(slide, plan, grid, coords, params.tile_size, params.strip_tiles):
            buf[i - start] = tile
            if i - start + 1 == len(buf) or i == len(grid) - 1:
                tiles[start : i + 1] = buf[: i - start + 1]  # whole shards: no read-modify-write
                start = i + 1
            bar.update(1)
        bar.close()
        g.attrs.update(attrs)
    slide.close()
    return attrs


def tile_boxes_in_mask(coords: np.ndarray, step0: float, mask_downsample: float) -> np.ndarray:
    """Tile rectangles [x0, y0, x1, y1] in mask pixels, for the QC overlay."""
    c = coords / mask_downsample
    return np.concatenate([c, c + step0 / mask_downsample], axis=1)


__all__ = ["TileParams", "tile_slide", "select_tiles", "tile_fractions", "SlideError", "load_mask"]
