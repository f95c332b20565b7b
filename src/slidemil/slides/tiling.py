"""Tiling a slide on one global grid at a target mpp into a sharded, JPEG-per-tile Zarr store.

The grid has its origin at level-0 (0, 0) and a step of one tile at the target mpp, so grid
position (col, row) means the same place for every tissue piece of the slide (neighbour graphs
rely on that). Only whole tiles inside the slide are used.

Speed (benchmarks/tiling.py, one core): for tiled JPEG TIFF and Aperio SVS the level's JPEG tiles
are read and decoded directly (jpeg_tiles.TiledJpegLevel), not through OpenSlide's read_region; a
target a power of two coarser than the level is decoded at that scale by libjpeg's scaled IDCT (no
resampling: 20x from a 40x scan costs about the JPEG decode of the 40x tiles); a tile that is
exactly one source tile is stored as that JPEG (no decode, no re-encode); every other tile is
encoded once, and shards are written whole by store.write_tile_shard (zarr's per-chunk pipeline
cost more than the encoding). Other formats (JPEG 2000 SVS, NDPI, MRXS, DICOM, ...) go through
OpenSlide, a strip of tiles per call, and plain images OpenSlide refuses (striped TIFF, PNG) through
libvips (vips.VipsSlide) the same way. `threads` shards are tiled in parallel; the store does not
depend on it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import zarr

from slidemil import __version__
from slidemil.config import TileParams
from slidemil.slides.jpeg_tiles import TiledJpegLevel, open_tiled_jpeg_level
from slidemil.slides.slide import MPP_TOLERANCE, ReadPlan, open_slide, plan_read, rgba_to_rgb, slide_mpp
from slidemil.slides.vips import VipsSlide
from slidemil.files import atomic_path
from slidemil.slides.store import create_tile_arrays, write_index_arrays, write_tile_shard

log = logging.getLogger(__name__)


def tile_fractions(mask: np.ndarray, mask_downsample: float, step0: float, n_cols: int, n_rows: int) -> np.ndarray:
    """Tissue fraction [n_rows, n_cols] of every grid cell, from a mask at `mask_downsample`.

    Each mask pixel votes for the cell holding its centre; cells smaller than a mask pixel (no
    centre falls inside) take the mask value at their own centre.
    """
    mh, mw = mask.shape
    cy = ((np.arange(mh) + 0.5) * mask_downsample / step0).astype(np.int64)
    cx = ((np.arange(mw) + 0.5) * mask_downsample / step0).astype(np.int64)
    ok_y, ok_x = cy < n_rows, cx < n_cols
    cy, cx, rows = cy[ok_y], cx[ok_x], np.nonzero(ok_y)[0]
    total = np.zeros(n_rows * n_cols)
    count = np.zeros(n_rows * n_cols)
    chunk = max(1, 2**20 // max(1, len(cx)))  # mask rows per pass: ~30 MB whatever the mask size
    for k in range(0, len(rows), chunk):
        m = mask[rows[k : k + chunk]][:, ok_x]
        idx = (cy[k : k + chunk, None] * n_cols + cx[None, :]).ravel()
        total += np.bincount(idx, weights=m.ravel().astype(np.float64), minlength=n_rows * n_cols)
        count += np.bincount(idx, minlength=n_rows * n_cols)
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


def _resize(strip: np.ndarray, scale: float) -> np.ndarray:
    """Resample a uint8 RGB strip by `scale` with an antialiased linear kernel (libvips, pixel centres
    aligned: output edge e sits at input edge e / scale)."""
    import pyvips

    h, w, _ = strip.shape
    img = pyvips.Image.new_from_memory(np.ascontiguousarray(strip).data, w, h, 3, "uchar")
    out = img.resize(scale, kernel="linear")
    return np.ndarray(buffer=out.write_to_memory(), dtype=np.uint8, shape=(out.height, out.width, 3))


class _Regions:
    """Pixels of one level at 1/denom scale, in that scale's px; white outside the level.

    For a TiledJpegLevel, source tiles are decoded once each and kept only while a later tile of
    the same pass can still need them (tiles come in row-major order), so memory stays at about
    one row of source tiles whatever the slide size.
    """

    def __init__(self, slide, level: int, denom: int):
        self.slide, self.level, self.denom = slide, level, denom
        self.jpeg = isinstance(slide, TiledJpegLevel)
        self.cache: dict[tuple[int, int], np.ndarray] = {}
        if self.jpeg:
            self.tw, self.th = slide.tile_w // denom, slide.tile_h // denom
            self.w, self.h = slide.width // denom, slide.height // denom

    def evict(self, top: int, left: int, keep_below: int) -> None:
        """Drop tiles above row `top`, and tiles left of `left` that end above `keep_below`."""
        th, tw = self.th, self.tw
        for k in [k for k in self.cache if (k[1] + 1) * th <= top or ((k[0] + 1) * tw <= left
                                                                       and (k[1] + 1) * th <= keep_below)]:
            del self.cache[k]

    def get(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        if not self.jpeg:  # OpenSlide: level px -> level-0 coordinates of the top-left corner
            ds = self.slide.level_downsamples[self.level]
            region = self.slide.read_region((int(round(x0 * ds)), int(round(y0 * ds))), self.level, (w, h))
            return np.asarray(rgba_to_rgb(region))
        tw, th = self.tw, self.th
        xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + w, self.w), min(y0 + h, self.h)
        tx, ty = x0 // tw, y0 // th
        if (xa, ya, xb, yb) == (x0, y0, x0 + w, y0 + h) and (x0 + w - 1) // tw == tx and (y0 + h - 1) // th == ty:
            tile = self.cache.get((tx, ty))  # inside one source tile: a view, no copy
            if tile is None:
                tile = self.cache[(tx, ty)] = self.slide.decode(tx, ty, self.denom)
            return tile[y0 - ty * th : y0 - ty * th + h, x0 - tx * tw : x0 - tx * tw + w]
        out = np.full((h, w, 3), 255, np.uint8)
        for ty in range(ya // th, (yb - 1) // th + 1) if yb > ya else ():
            for tx in range(xa // tw, (xb - 1) // tw + 1) if xb > xa else ():
                tile = self.cache.get((tx, ty))
                if tile is None:
                    tile = self.cache[(tx, ty)] = self.slide.decode(tx, ty, self.denom)
                sx, sy = max(xa, tx * tw), max(ya, ty * th)
                ex, ey = min(xb, (tx + 1) * tw), min(yb, (ty + 1) * th)
                piece = tile[sy - ty * th : ey - ty * th, sx - tx * tw : ex - tx * tw]
                out[sy - y0 : ey - y0, sx - x0 : ex - x0] = piece
        return out


def read_geometry(slide, plan: ReadPlan) -> tuple[int, float, bool]:
    """How tiles are cut from `plan.level`: (denom, scale, as_is).

    Pixels are decoded at 1/denom of the level (libjpeg's DCT scaling, TiledJpegLevel only) and then
    resampled by `scale` (decoded px -> tile px) unless `as_is`: like `plan_read`, a decoded scale
    within MPP_TOLERANCE of the target is used as it is rather than resampled (a 0.2527 mpp scan is
    read at "0.5 mpp" by halving it, not by halving and then shrinking 1.1%).
    """
    ratio = plan.target_downsample / plan.level_downsample  # level px per tile px
    denom = 1
    if isinstance(slide, TiledJpegLevel) and slide.standalone:
        while (denom < 8 and ratio / (2 * denom) >= 1 / (1 + MPP_TOLERANCE)
               and slide.tile_w % (2 * denom) == 0 and slide.tile_h % (2 * denom) == 0):
            denom *= 2
    scale = denom / ratio
    as_is = abs(scale - 1) <= MPP_TOLERANCE
    return denom, (1.0 if as_is else scale), as_is


def read_tiles(slide, plan: ReadPlan, grid: np.ndarray, coords: np.ndarray, tile_size: int,
               strip_tiles: int, copy_jpeg: bool = True):
    """Yield (index, tile) in order: tile is uint8 [T,T,3], or a source tile's JPEG bytes to store as-is.

    `slide` is an OpenSlide or a TiledJpegLevel for `plan.level` (the TIFF's JPEG tiles decoded
    directly). A run of up to `strip_tiles` adjacent tiles on one grid row is read as one strip and,
    when the level does not match the target, resampled as a whole (libvips, antialiased linear
    kernel), then cut into tiles. With `copy_jpeg`, a tile that is exactly one source JPEG tile is
    passed on as that JPEG's bytes (no decode, no re-encode, no second generation loss).
    """
    ds = plan.level_downsample
    denom, scale, as_is = read_geometry(slide, plan)
    jpeg = isinstance(slide, TiledJpegLevel)
    regions = _Regions(slide, plan.level, denom)
    copy = (jpeg and copy_jpeg and as_is and denom == 1 and slide.standalone
            and slide.tile_w == slide.tile_h == tile_size)
    span = tile_size if as_is else tile_size / scale  # tile edge, decoded px
    stride = tile_size * plan.target_downsample / ds / denom  # grid step, decoded px (= span unless as-is)
    margin = 0 if as_is else 3  # resampling kernel support, decoded px
    for a, b in _runs(grid, strip_tiles):
        ux = coords[a:b, 0] / ds / denom  # tile origins, decoded px
        uy = coords[a, 1] / ds / denom
        if as_is:
            ox = np.round(ux).astype(np.int64)
            oy = int(round(uy))
            x0, y0, x1, y1 = int(ox[0]), oy, int(ox[-1]) + tile_size, oy + tile_size
        else:
            x0, y0 = math.floor(ux[0]) - margin, math.floor(uy) - margin
            x1, y1 = math.ceil(ux[-1] + span) + margin, math.ceil(uy + span) + margin
        if jpeg:  # forget source tiles that no later tile of this pass can need
            regions.evict(y0, x0, math.floor(uy + stride) - margin - 1)
        out: dict[int, bytes] = {}
        if copy:
            ty, ry = divmod(oy, tile_size)
            for i, x in zip(range(a, b), ox.tolist()):
                tx, rx = divmod(x, tile_size)
                if rx == 0 and ry == 0 and x + tile_size <= slide.width and oy + tile_size <= slide.height:
                    data = slide.jpeg(tx, ty)
                    if data is not None:
                        out[i] = data
            if len(out) == b - a:
                yield from out.items()
                continue
        if as_is and jpeg:  # tile by tile: one that lies inside a source tile is a view of it
            for i, x in zip(range(a, b), ox.tolist()):
                yield i, out[i] if i in out else regions.get(x, oy, tile_size, tile_size)
            continue
        strip = regions.get(x0, y0, x1 - x0, y1 - y0)  # OpenSlide: one call per run
        if as_is:
            sx, sy = ox - x0, 0
        else:
            strip = _resize(strip, scale)
            sx = np.round((ux - x0) * scale).astype(np.int64)  # tile origins in the resampled strip
            sy = int(round((uy - y0) * scale))
            need_h, need_w = sy + tile_size, int(sx[-1]) + tile_size
            if strip.shape[0] < need_h or strip.shape[1] < need_w:  # rounding at the far edge
                strip = np.pad(strip, ((0, max(0, need_h - strip.shape[0])), (0, max(0, need_w - strip.shape[1])),
                                       (0, 0)), mode="edge")
        for i, x in zip(range(a, b), sx.tolist()):
            yield i, out[i] if i in out else strip[sy : sy + tile_size, x : x + tile_size]


def load_mask(mask_png: str | Path) -> tuple[np.ndarray, dict]:
    """A mask PNG written by the mask stage and its JSON sidecar (downsample, area)."""
    from PIL import Image

    mask_png = Path(mask_png)
    meta = json.loads(mask_png.with_suffix(".json").read_text())
    return np.asarray(Image.open(mask_png)) > 0, meta


def _encode_tiles(slide, plan: ReadPlan, grid: np.ndarray, coords: np.ndarray,
                  params: TileParams) -> tuple[list[bytes], int]:
    """JPEG bytes of the given tiles, in order, and how many of them are copied source tiles."""
    import imagecodecs

    jpegs: list[bytes] = [b""] * len(grid)
    copied = 0
    for i, tile in read_tiles(slide, plan, grid, coords, params.tile_size, params.strip_tiles, params.copy_jpeg):
        if isinstance(tile, bytes):
            jpegs[i], copied = tile, copied + 1
        else:  # the same call as JpegCodec's encoder, so the bytes do not depend on the path
            jpegs[i] = imagecodecs.jpeg_encode(tile, level=params.jpeg_quality)
    return jpegs, copied


def tile_slide(slide_path: str | Path, mask_png: str | Path, out: str | Path, params: TileParams,
               slide_id: str, mpp_override: float | None = None, progress: bool = True, threads: int = 1) -> dict:
    """Tile one slide into `out` (a Zarr v3 group), atomically. Returns the store's attrs.

    Shards are filled one at a time (`threads` of them in parallel) and written whole, so memory is
    bounded by a few shards and a row of source tiles, not by the slide. The store is the same
    whatever `threads` is.
    """
    import pyvips
    from tqdm import tqdm

    slide_path = Path(slide_path)
    mask, mask_meta = load_mask(mask_png)
    slide = open_slide(slide_path)
    mpp = slide_mpp(slide, slide_path, mpp_override)
    plan = plan_read(slide.level_downsamples, mpp, params.target_mpp, slide_path, params.allow_upsample)
    step0 = params.tile_size * plan.target_downsample
    grid, coords = select_tiles(slide.dimensions, step0, mask, mask_meta["downsample"], params.min_tissue)
    reader = open_tiled_jpeg_level(slide_path, slide, plan.level) or slide
    denom, scale, as_is = read_geometry(reader, plan)
    stat = slide_path.stat()
    attrs = {
        "slide_id": slide_id, "source_path": str(slide_path), "source_size": stat.st_size,
        "source_mtime": stat.st_mtime, "slide_mpp": mpp, "mpp_source": mask_meta.get("mpp_source"),
        "target_mpp": params.target_mpp, "tile_size": params.tile_size, "stride": params.tile_size,
        "tile_size_level0": step0, "level": plan.level, "level_downsample": plan.level_downsample,
        "resize_scale": plan.scale, "width": slide.dimensions[0], "height": slide.dimensions[1],
        "reader": "tiff-jpeg" if reader is not slide else "libvips" if isinstance(slide, VipsSlide) else "openslide",
        "decode_denom": denom,
        "resample_scale": scale, "n_tiles": len(grid), "status": "ok" if len(grid) else "empty",
        "params": asdict(params), "slidemil_version": __version__,
    }
    if not len(grid):
        log.warning("%s: no tissue tiles (min_tissue=%s); writing an empty store flagged 'empty'",
                    slide_id, params.min_tissue)
    log.info("%s: %d tiles at %.3f mpp from level %d (downsample %.3f) via %s, decoded at 1/%d, %s", slide_id,
             len(grid), params.target_mpp, plan.level, plan.level_downsample, attrs["reader"], denom,
             "read as is" if as_is else f"resampled x{scale:.4f}")
    n = len(grid)
    per_shard = max(1, min(params.shard_tiles, n))
    shards = [(a, min(a + per_shard, n)) for a in range(0, n, per_shard)]
    vips_cache, vips_threads = pyvips.cache_get_max(), pyvips.concurrency_get()
    pyvips.cache_set_max(0)  # strips are wrapped, not copied: a cached operation would pin them
    pyvips.concurrency_set(1)  # parallelism is ours (threads), not libvips'
    copied = 0
    try:
        with atomic_path(out) as tmp:
            g = zarr.open_group(tmp, mode="w", zarr_format=3)
            tiles = create_tile_arrays(g, n, params.tile_size, params.shard_tiles, params.jpeg_quality)
            write_index_arrays(g, coords, grid)
            bar = tqdm(total=n, desc=f"tile {slide_id}", unit="tile", disable=not progress, mininterval=2)

            def job(a: int, b: int) -> tuple[list[bytes], int]:
                return _encode_tiles(reader, plan, grid[a:b], coords[a:b], params)

            if threads <= 1 or len(shards) <= 1:
                results = (job(a, b) for a, b in shards)
            else:
                results = _ordered(job, shards, threads)
            for k, (jpegs, c) in enumerate(results):
                write_tile_shard(tiles, k, jpegs)
                copied += c
                bar.update(len(jpegs))
            bar.close()
            attrs["tiles_copied"] = copied
            g.update_attributes(attrs)  # one write of zarr.json (attrs.update writes it per key)
    finally:
        pyvips.cache_set_max(vips_cache)
        pyvips.concurrency_set(vips_threads)
        if reader is not slide:
            reader.close()
        slide.close()
    return attrs


def _ordered(fn, jobs: list[tuple[int, int]], threads: int):
    """fn(*job) for each job on `threads` threads, yielded in order, at most 2 x threads in flight."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    ex = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tile")
    pending: deque = deque()
    try:
        it = iter(jobs)
        for job in it:
            pending.append(ex.submit(fn, *job))
            if len(pending) >= 2 * threads:
                break
        while pending:
            result = pending.popleft().result()
            for job in it:
                pending.append(ex.submit(fn, *job))
                break
            yield result
    finally:
        for f in pending:
            f.cancel()
        ex.shutdown(wait=True, cancel_futures=True)


def tile_slide_or_flag(slide_path: str | Path, slide_id: str, mask_png: str | Path, mask_qc_png: str | Path,
                       out: str | Path, qc_png: str | Path, params: TileParams, mpp_override: float | None = None,
                       threads: int = 1, on_error: str = "fail") -> dict:
    """The tile stage: `tile_slide` and its QC picture (the mask's panel with the kept tiles drawn).

    When the mask stage failed or the slide cannot be read: an empty store and a placeholder QC
    picture flagged failed, after one ERROR line; on_error 'fail' raises SlideFailure instead
    (the CLI exits 1). Returns the store's attrs.
    """
    from slidemil.slides.failures import (FAILED, failure_picture, failure_reason, report_failure, slide_read_errors,
                                   write_failed_store)
    from slidemil.files import save_png
    from slidemil.slides.qcpicture import tile_picture

    mask_meta = json.loads(Path(mask_png).with_suffix(".json").read_text())
    reason = None
    if mask_meta.get("status") == FAILED:
        reason = mask_meta.get("reason", "the mask stage failed")
        if on_error == "fail":
            report_failure(slide_id, reason, on_error)
        log.warning("%s: not tiled, the mask stage failed (%s); writing an empty store flagged 'failed'",
                    slide_id, reason)
    else:
        try:
            attrs = tile_slide(slide_path, mask_png, out, params, slide_id, mpp_override, threads=threads)
        except slide_read_errors() as e:
            reason = failure_reason(e, slide_path)
            report_failure(slide_id, reason, on_error)
    if reason is not None:
        trace = {"source_path": str(slide_path), "target_mpp": params.target_mpp, "stride": params.tile_size,
                 "params": asdict(params)}
        attrs = write_failed_store(out, slide_id, reason, params.tile_size, trace)
        save_png(failure_picture(slide_id, reason), qc_png)
        return attrs
    coords = zarr.open_group(str(out), mode="r")["coords"][:]
    title = (f"{slide_id}: {attrs['n_tiles']} tiles of {params.tile_size} px at {params.target_mpp:g} um/px "
             f"(min tissue {params.min_tissue:g})")
    save_png(tile_picture(mask_qc_png, mask_meta, coords, attrs["tile_size_level0"], title), qc_png)
    return attrs


def mask_and_tile_or_flag(slide_path: str | Path, slide_id: str, mask_png: str | Path, mask_qc_png: str | Path,
                          out: str | Path, qc_png: str | Path, tissue, mask_mpp: float, params: TileParams,
                          mpp_override: float | None = None, threads: int = 1, on_error: str = "fail") -> dict:
    """One slide of the workflow's tile job: the tissue mask (slidemil.slides.tissue.mask_slide_or_flag), then
    the tiles (`tile_slide_or_flag`). One stage, not two: Snakemake's planning time grows with the
    number of jobs (10,000 slides), and the mask costs one thumbnail read, so redoing it when only
    tile parameters change is cheap. `tissue`: a TissueParams."""
    from slidemil.slides.tissue import mask_slide_or_flag

    mask_slide_or_flag(slide_path, slide_id, mask_png, mask_qc_png, tissue, mask_mpp=mask_mpp,
                       mpp_override=mpp_override, on_error=on_error)
    return tile_slide_or_flag(slide_path, slide_id, mask_png, mask_qc_png, out, qc_png, params, mpp_override,
                              threads=threads, on_error=on_error)


def preprocess_batch(slides: dict[str, dict], masks_dir: str | Path, mask_qc_dir: str | Path, tiles_dir: str | Path,
                     qc_dir: str | Path, tissue, mask_mpp: float, params: TileParams, threads: int = 1,
                     on_error: str = "fail") -> None:
    """The workflow's tile job: `mask_and_tile_or_flag` for each slide of a batch, one after another.

    slides: slide_id -> {"path": slide file, "mpp": the sheet's mpp or None}. Writes
    <masks_dir>/<id>.png (+ .json), <mask_qc_dir>/<id>.png, <tiles_dir>/<id>.zarr, <qc_dir>/<id>.png.
    A batch of slides per job, not one, because Snakemake plans ~7 ms per job: 10,000 one-slide jobs
    took 70 s of CPU to plan. A slide that cannot be read is flagged (on_error 'skip') and the batch
    goes on; with 'fail' the first such slide stops the job.
    """
    from tqdm import tqdm

    masks_dir, mask_qc_dir, tiles_dir, qc_dir = map(Path, (masks_dir, mask_qc_dir, tiles_dir, qc_dir))
    for sid, slide in tqdm(slides.items(), desc="slides", unit="slide", mininterval=5.0):
        log.info("%s: %s", sid, slide["path"])
        mask_and_tile_or_flag(slide["path"], sid, masks_dir / f"{sid}.png", mask_qc_dir / f"{sid}.png",
                              tiles_dir / f"{sid}.zarr", qc_dir / f"{sid}.png", tissue, mask_mpp, params,
                              slide.get("mpp"), threads=threads, on_error=on_error)


__all__ = ["TileParams", "mask_and_tile_or_flag", "preprocess_batch", "tile_slide", "tile_slide_or_flag", "select_tiles", "tile_fractions", "load_mask"]
