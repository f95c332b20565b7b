"""Cohort QC table: one row per slide with tiles, tissue area, the level read and flags."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import zarr


def slide_row(tiles_store: str | Path, mask_json: str | Path) -> dict:
    attrs = dict(zarr.open_group(str(tiles_store), mode="r").attrs)
    meta = json.loads(Path(mask_json).read_text())
    flags = []
    if attrs.get("n_tiles", 0) == 0:
        flags.append("no_tissue_tiles")
    if meta.get("mpp_source") == "samples.tsv":
        flags.append("mpp_from_sheet")
    if attrs.get("resize_scale", 1.0) > 1.0:
        flags.append("upsampled")
    return {
        "slide_id": attrs.get("slide_id", Path(tiles_store).stem), "status": attrs.get("status", "ok"),
        "n_tiles": attrs.get("n_tiles", 0), "tissue_area_mm2": round(meta["tissue_area_mm2"], 4),
        "tissue_fraction": round(meta["tissue_fraction"], 4), "slide_mpp": attrs.get("slide_mpp"),
        "target_mpp": attrs.get("target_mpp"), "level": attrs.get("level"),
        "level_downsample": attrs.get("level_downsample"), "width": attrs.get("width"),
        "height": attrs.get("height"), "flags": ",".join(flags), "source_path": attrs.get("source_path"),
    }


def cohort_table(tiles: list[str], masks: list[str]) -> pd.DataFrame:
    by_slide = {Path(m).stem: m for m in masks}
    return pd.DataFrame([slide_row(t, by_slide[Path(t).stem]) for t in tiles])
