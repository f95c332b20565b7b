"""Cohort QC: a table with one row per slide (status, reason, tiles, tissue area, flags) and a plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from slidemil.slides.failures import EMPTY, FAILED, store_status
from slidemil.files import atomic_path


INK_FLAG = 0.005  # flag a slide when ink covers more than this fraction of it
STATUS_COLOURS = {"ok": "#2e7d32", "empty": "#f9a825", "failed": "#c62828"}


def slide_row(tiles_store: str | Path, mask_json: str | Path) -> dict:
    """One slide's QC row: status (ok / empty / failed) and reason, tiles, tissue area, flags."""
    attrs = dict(zarr.open_group(str(tiles_store), mode="r").attrs)
    meta = json.loads(Path(mask_json).read_text())
    status, reason = store_status(attrs)
    if meta.get("status") == FAILED:  # the mask stage failed: its reason is the first cause
        status, reason = FAILED, meta.get("reason", "") or reason
    if status == EMPTY and not reason:
        min_tissue = (attrs.get("params") or {}).get("min_tissue")
        reason = ("no tissue found" if not meta.get("tissue_fraction") else
                  f"no tile is at least {min_tissue:g} tissue" if min_tissue is not None else "no tissue tiles")
    flags = []
    if status == EMPTY:
        flags.append("no_tissue_tiles")
    if meta.get("mpp_source") == "samples.tsv":
        flags.append("mpp_from_sheet")
    if (attrs.get("resize_scale") or 1.0) > 1.0:
        flags.append("upsampled")
    if meta.get("ink_fraction", 0.0) > INK_FLAG:
        flags.append("pen_ink")
    if meta.get("blur_fraction", 0.0) > 0:
        flags.append("blur_excluded")
    return {
        "slide_id": attrs.get("slide_id") or meta.get("slide_id") or Path(tiles_store).stem,
        "status": status, "reason": reason, "n_tiles": int(attrs.get("n_tiles", 0)),
        "tissue_area_mm2": round(meta.get("tissue_area_mm2", 0.0), 4),
        "tissue_fraction": round(meta.get("tissue_fraction", 0.0), 4),
        "ink_fraction": round(meta.get("ink_fraction", 0.0), 4), "blur_fraction": round(meta.get("blur_fraction", 0.0), 4),
        "slide_mpp": attrs.get("slide_mpp", meta.get("slide_mpp")), "mpp_source": meta.get("mpp_source"),
        "target_mpp": attrs.get("target_mpp"), "level": attrs.get("level"),
        "level_downsample": attrs.get("level_downsample"), "width": attrs.get("width"),
        "height": attrs.get("height"), "flags": ",".join(flags),
        "source_path": attrs.get("source_path") or meta.get("source_path"),
    }


def cohort_table(tiles: list[str], masks: list[str]) -> pd.DataFrame:
    """One row per tile store (slide), joined to its mask sidecar by file stem."""
    by_slide = {Path(m).stem: m for m in masks}
    table = pd.DataFrame([slide_row(t, by_slide[Path(t).stem]) for t in tiles])
    for col in ("level", "width", "height"):  # integers, blank where a slide failed
        if col in table:
            table[col] = table[col].astype("Int64")
    return table


def cohort_plot(table: pd.DataFrame, out_png: str | Path) -> None:
    """Tiles per slide, one bar per slide coloured by status; failed/empty slides labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n = len(table)
    fig, ax = plt.subplots(figsize=(min(40.0, max(6.0, 0.25 * n + 2)), 4), layout="constrained")
    x = np.arange(n)
    colours = [STATUS_COLOURS.get(s, "grey") for s in table["status"]]
    ax.bar(x, table["n_tiles"], color=colours, width=0.8)
    top = max(1, int(table["n_tiles"].max()) if n else 1)
    for i, (status, tiles) in enumerate(zip(table["status"], table["n_tiles"])):
        if status != "ok":
            ax.text(i, tiles + 0.02 * top, status, rotation=90, ha="center", va="bottom", fontsize=7,
                    color=STATUS_COLOURS.get(status, "grey"))
    if n <= 80:
        ax.set_xticks(x, table["slide_id"].astype(str), rotation=90, fontsize=7)
    else:
        ax.set_xticks([])
    ax.set_ylim(0, top * 1.25)
    ax.set_ylabel("tiles")
    counts = table["status"].value_counts()
    ax.set_title(f"{n} slides: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUS_COLOURS))
    ax.legend(handles=[Patch(color=c, label=s) for s, c in STATUS_COLOURS.items()], loc="upper right", fontsize=8)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def write_cohort_qc(tiles: list[str], masks: list[str], out_tsv: str | Path, out_png: str | Path | None = None
                    ) -> pd.DataFrame:
    """The cohort QC stage: table (and plot) written, one log line per slide skipped or flagged."""
    import logging

    log = logging.getLogger("slidemil")
    table = cohort_table(tiles, masks)
    with atomic_path(out_tsv) as tmp:  # the table last: it is the rule's first output
        table.to_csv(tmp, sep="\t", index=False)
        if out_png:
            cohort_plot(table, out_png)
    for _, r in table.iterrows():
        if r["status"] != "ok":
            log.warning("%s: %s (%s)", r["slide_id"], r["status"], r["reason"])
        elif r["flags"]:
            log.warning("%s: %s", r["slide_id"], r["flags"])
    counts = table["status"].value_counts()
    log.info("%d slides (%d ok, %d empty, %d failed), %d tiles, %d flagged", len(table), counts.get("ok", 0),
             counts.get("empty", 0), counts.get("failed", 0), table["n_tiles"].sum(), (table["flags"] != "").sum())
    return table
