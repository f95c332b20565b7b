"""Export a tile store (and optionally its features) as a CLAM/TRIDENT-style HDF5 file.

Layout, as the tools users already have expect it:
- `coords` int64 [N, 2]: level-0 (x, y) of each tile's top-left corner, attrs
  patch_size (tile edge in px AT patch_level: CLAM's meaning), patch_level (pyramid level read),
  custom_downsample (patch_size / tile edge at the target mpp: CLAM's resize after reading;
  2.0 for 1.0 mpp read from a 0.5 mpp level 0, 1.0 when the target is a level),
  target_patch_size (the tile edge at the target mpp, px: CLAM's other name for that resize),
  patch_size_level0 (tile edge at level 0, px: TRIDENT), downsample ([ds, ds] of patch_level) and
  level_dim / downsampled_level_dim ((W, H) of patch_level) as CLAM writes them, level0_width,
  level0_height, level0_magnification / target_magnification (TRIDENT), target_mpp, slide_mpp,
  overlap (0), name (slide id), plus the store's status, reason, resize_scale and version;
- `grid` int64 [N, 2]: (col, row) on slidemil's global grid (extra; other tools ignore it);
- `features` float32 [N, D] when a feature store of the same tiles is given.

How each reader gets the tile's field of view at any target mpp (checked by tests/test_export.py):
- CLAM's Whole_Slide_Bag_FP: read_region(coord, patch_level, (patch_size, patch_size)), then
  resize by custom_downsample (or to target_patch_size) -> the stored tile.
- TRIDENT reads `patch_size` pixels at `target_magnification` from level 0, i.e. a level-0 edge of
  patch_size * level0_magnification / target_magnification. `patch_size` follows CLAM, so
  target_magnification is the magnification of patch_level (10 / (slide_mpp * downsample)), which
  makes that edge patch_size_level0: the same field of view. It equals 10 / target_mpp whenever the
  target is a pyramid level; between levels TRIDENT's patches are the tile at patch_level's
  resolution (custom_downsample x larger), and `target_mpp` is the stored tiles' mpp.
- TRIDENT's slide encoders use patch_size_level0.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from slidemil import __version__
from slidemil.files import atomic_path

log = logging.getLogger(__name__)


def _number(x: float) -> int | float:
    """An int when integral: CLAM and TRIDENT take custom_downsample as an int (2 for 1.0 mpp from 0.5)."""
    return int(round(x)) if abs(x - round(x)) < 1e-9 else float(x)


def _coords_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """HDF5 attrs of `coords` from a tile store's attrs (missing values are left out)."""
    ds = attrs.get("level_downsample")
    step0 = attrs.get("tile_size_level0")
    tile = attrs.get("tile_size")
    mpp = attrs.get("slide_mpp")
    width, height = attrs.get("width"), attrs.get("height")
    at_level = int(round(step0 / ds)) if step0 is not None and ds else None  # tile edge at patch_level
    out: dict[str, Any] = {
        "patch_size": at_level if at_level is not None else tile,
        "patch_level": attrs.get("level"),
        "custom_downsample": _number(at_level / tile) if at_level is not None and tile else None,
        "target_patch_size": tile,
        "patch_size_level0": int(round(step0)) if step0 is not None else None,
        "downsample": np.array([ds, ds], np.float64) if ds else None,
        "level0_width": width, "level0_height": height,
        "target_mpp": attrs.get("target_mpp"), "slide_mpp": mpp,
        "level0_magnification": 10.0 / mpp if mpp else None,
        "target_magnification": 10.0 / (mpp * ds) if mpp and ds else None,  # of patch_level: see above
        "resize_scale": attrs.get("resize_scale"), "overlap": 0,
        "name": attrs.get("slide_id"), "status": attrs.get("status") or "ok", "reason": attrs.get("reason") or "",
        "source_path": attrs.get("source_path"), "slidemil_version": __version__,
    }
    if ds and width and height:
        level_dim = np.array([int(width / ds), int(height / ds)], np.int64)
        out["level_dim"] = out["downsampled_level_dim"] = level_dim
    return {k: v for k, v in out.items() if v is not None}


def export_h5(tile_store: str | Path, out_h5: str | Path, feature_store: str | Path | None = None) -> int:
    """Write `out_h5` from a tile store (and a feature store of the same tiles). Returns N.

    Written atomically (slidemil.files.atomic_path), so a killed job never leaves a half-written file.
    """
    import h5py
    import zarr

    g = zarr.open_group(str(tile_store), mode="r")
    attrs = dict(g.attrs)
    coords = np.asarray(g["coords"][:], np.int64).reshape(-1, 2)
    grid = np.asarray(g["grid"][:], np.int64).reshape(-1, 2)
    features = None
    if feature_store is not None:
        f = zarr.open_group(str(feature_store), mode="r")
        if not np.array_equal(np.asarray(f["coords"][:], np.int64).reshape(-1, 2), coords):
            raise ValueError(f"{feature_store}: its coords differ from {tile_store}'s; re-run embed for this slide")
        features = np.asarray(f["features"][:], np.float32)
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as h:
        ds = h.create_dataset("coords", data=coords, maxshape=(None, 2))
        for k, v in _coords_attrs(attrs).items():
            ds.attrs[k] = v
        h.create_dataset("grid", data=grid, maxshape=(None, 2))
        if features is not None:
            fd = h.create_dataset("features", data=features, maxshape=(None, features.shape[1]))
            fd.attrs["encoder"] = str(dict(f.attrs).get("encoder", ""))
    status = attrs.get("status") or "ok"
    if status != "ok":
        log.warning("%s: store is %s (%s): wrote an h5 with 0 coords", attrs.get("slide_id"), status,
                    attrs.get("reason") or "no tissue tiles")
    log.info("%s: %d coords%s -> %s", attrs.get("slide_id"), len(coords),
             f" + features {features.shape[1]}-d" if features is not None else "", out_h5)
    return len(coords)
