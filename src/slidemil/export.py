"""Export a tile store (and optionally its features) as a CLAM/TRIDENT-style HDF5 file.

Layout, as the tools users already have expect it:
- `coords` int64 [N, 2]: level-0 (x, y) of each tile's top-left corner, attrs
  patch_size (tile edge at the target mpp, px; TRIDENT's meaning), patch_level (pyramid level read),
  patch_size_level0 (tile edge at level 0, px), downsample ([ds, ds] of patch_level, CLAM),
  level_dim / downsampled_level_dim ((W, H) of patch_level, CLAM), level0_width, level0_height,
  target_mpp, slide_mpp, level0_magnification / target_magnification (10 / mpp, TRIDENT),
  overlap (0), name (slide id), plus the store's status, reason, resize_scale and version;
- `grid` int64 [N, 2]: (col, row) on slidemil's global grid (extra; other tools ignore it);
- `features` float32 [N, D] when a feature store of the same tiles is given.

CLAM's feature extractor reads `patch_size` pixels at `patch_level`; that is the tile's footprint
whenever the target mpp is a pyramid level (resize_scale 1). Otherwise the level was resampled
and `patch_size_at_level` (the tile edge at patch_level) is what CLAM should read, then resize.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from slidemil import __version__

log = logging.getLogger(__name__)


def _coords_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """HDF5 attrs of `coords` from a tile store's attrs (missing values are left out)."""
    ds = attrs.get("level_downsample")
    step0 = attrs.get("tile_size_level0")
    width, height = attrs.get("width"), attrs.get("height")
    out: dict[str, Any] = {
        "patch_size": attrs.get("tile_size"),
        "patch_level": attrs.get("level"),
        "patch_size_level0": int(round(step0)) if step0 is not None else None,
        "patch_size_at_level": int(round(step0 / ds)) if step0 is not None and ds else None,
        "downsample": np.array([ds, ds], np.float64) if ds else None,
        "level0_width": width, "level0_height": height,
        "target_mpp": attrs.get("target_mpp"), "slide_mpp": attrs.get("slide_mpp"),
        "level0_magnification": 10.0 / attrs["slide_mpp"] if attrs.get("slide_mpp") else None,
        "target_magnification": 10.0 / attrs["target_mpp"] if attrs.get("target_mpp") else None,
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

    Written to a temporary name and renamed, so a killed job never leaves a half-written file.
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
    out_h5 = Path(out_h5)
    out_h5.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_h5.with_name(f".{out_h5.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as h:
            ds = h.create_dataset("coords", data=coords, maxshape=(None, 2))
            for k, v in _coords_attrs(attrs).items():
                ds.attrs[k] = v
            h.create_dataset("grid", data=grid, maxshape=(None, 2))
            if features is not None:
                fd = h.create_dataset("features", data=features, maxshape=(None, features.shape[1]))
                fd.attrs["encoder"] = str(dict(f.attrs).get("encoder", ""))
        os.replace(tmp, out_h5)
    finally:
        if tmp.exists():
            tmp.unlink()
    status = attrs.get("status") or "ok"
    if status != "ok":
        log.warning("%s: store is %s (%s): wrote an h5 with 0 coords", attrs.get("slide_id"), status,
                    attrs.get("reason") or "no tissue tiles")
    log.info("%s: %d coords%s -> %s", attrs.get("slide_id"), len(coords),
             f" + features {features.shape[1]}-d" if features is not None else "", out_h5)
    return len(coords)
