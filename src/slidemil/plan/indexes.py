"""Per-scope indexes of per-slide outputs: one small TSV per feature folder, and one over the graphs.

The jobs that read every slide (MIL, heatmaps, probe, mining) take the index as their input instead
of n stores: 48 MIL jobs x 2 stores per slide were ~100 of Snakemake's ~112 input edges per slide, and
most of the planning time. The index is rewritten whenever a store is newer, so its readers rerun then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from slidemil.files import atomic_path
from slidemil.cohorts.sheet import read_sheet


def feature_row(path: Path) -> dict:
    """slide_id, n_tiles, status, reason of one feature store (its attrs, written by embed)."""
    import zarr

    attrs = zarr.open_group(str(path), mode="r").attrs
    n = int(attrs.get("n_tiles", 0))
    return {"n_tiles": n, "status": attrs.get("status", "ok" if n else "empty"), "reason": attrs.get("reason", "")}


def graph_row(path: Path) -> dict:
    """n_tiles, n_edges of one neighbour graph (CSR indptr: its last entry counts the edges)."""
    with np.load(path) as z:
        indptr = z["indptr"]
    return {"n_tiles": len(indptr) - 1, "n_edges": int(indptr[-1]) if len(indptr) else 0}


# kind -> (file name of a slide's output, its row, the stage that writes it: named in errors)
INDEX_KINDS: dict[str, tuple[str, Callable[[Path], dict], str]] = {
    "features": ("{slide}.zarr", feature_row, "embed"),
    "graphs": ("{slide}.npz", graph_row, "graph"),
}


def write_index(kind: str, directory: str | Path, samples: str | Path, out: str | Path) -> pd.DataFrame:
    """One row per slide of the sheet (in sheet order) from `directory`'s per-slide outputs, to `out` (TSV)."""
    name, row, stage = INDEX_KINDS[kind]
    rows = []
    for slide in read_sheet(samples)["slide_id"]:
        path = Path(directory) / name.format(slide=slide)
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing {kind} of slide {slide} (sheet {samples}); run the {stage} "
                                    f"stage for it (snakemake {path}) before indexing {directory}")
        rows.append({"slide_id": slide, **row(path)})
    table = pd.DataFrame(rows)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table
