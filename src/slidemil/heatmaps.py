"""Attention heatmaps of test slides and instance-level AUC against tumour annotations.

A MIL model's instance scores (ABMIL attention, or per-instance logits) are drawn over the slide
thumbnail, one PNG per test slide; where the slide has an annotation (GeoJSON polygons, or a
Camelyon16 ASAP XML), tiles whose centre lies inside a lesion are positives and the scores'
instance AUC says whether the model looks at the tumour.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from slidemil.metrics import auc_binary

log = logging.getLogger(__name__)


def load_polygons(path: str | Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(lesions, holes) as lists of level-0 (x, y) vertex arrays from GeoJSON or ASAP XML."""
    path = Path(path)
    if path.suffix.lower() == ".xml":
        from slidemil.cohorts import read_asap_annotation

        lesions, holes = [], []
        for _, group, xy in read_asap_annotation(path):
            (holes if group in ("_2", "Exclusion") else lesions).append(np.asarray(xy, float))
        return lesions, holes
    data = json.loads(path.read_text())
    features = data.get("features", [data]) if isinstance(data, dict) else data
    lesions, holes = [], []
    for f in features:
        geom = f.get("geometry", f)
        polys = geom["coordinates"] if geom["type"] == "MultiPolygon" else [geom["coordinates"]]
        for rings in polys:
            lesions.append(np.asarray(rings[0], float))
            holes.extend(np.asarray(r, float) for r in rings[1:])
    return lesions, holes


def tile_labels(coords: np.ndarray, tile_size0: float, annotation: str | Path) -> np.ndarray:
    """1 where the tile centre (level 0) is inside a lesion and not inside a hole."""
    from matplotlib.path import Path as MplPath

    centres = np.asarray(coords, float) + tile_size0 / 2
    lesions, holes = load_polygons(annotation)
    inside = np.zeros(len(centres), bool)
    for poly in lesions:
        inside |= MplPath(poly).contains_points(centres)
    for poly in holes:
        inside &= ~MplPath(poly).contains_points(centres)
    return inside.astype(int)


def draw_heatmap(thumb: np.ndarray, downsample: float, coords: np.ndarray, tile_size0: float,
                 scores: np.ndarray, title: str, out_png: str | Path,
                 lesions: list[np.ndarray] = ()) -> None:
    """Scores (rank-normalised within the slide) as coloured tiles over the thumbnail."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(7, 7 * thumb.shape[0] / thumb.shape[1] + 0.6))
    ax.imshow(thumb)
    if len(scores):
        ranks = np.argsort(np.argsort(scores)) / max(len(scores) - 1, 1)
        side = tile_size0 / downsample
        boxes = [Rectangle((x / downsample, y / downsample), side, side) for x, y in coords]
        pc = PatchCollection(boxes, cmap="turbo", alpha=0.5, linewidth=0)  # high = red, stands out
        pc.set_array(ranks)
        ax.add_collection(pc)
        fig.colorbar(pc, ax=ax, fraction=0.03, label="score rank within slide")
    for poly in lesions:
        ax.plot(poly[:, 0] / downsample, poly[:, 1] / downsample, color="black", linewidth=1.5)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def heatmaps_for_model(fold_dirs: list[str | Path], features_dir: str | Path, samples: pd.DataFrame,
                       annotations: dict[str, str], out_dir: str | Path, max_slides: int = 12) -> pd.DataFrame:
    """Heatmaps of up to `max_slides` test slides per fold and instance AUC of every test slide.

    fold_dirs: results/mil/{encoder}/{model}/fold{k} (attention.npz + predictions.csv).
    Returns and writes `instance_metrics.csv`: slide_id, fold, label, prob, n_tiles,
    n_tumour_tiles, instance_auc (nan without annotation or without both tile classes).
    """
    import zarr

    from slidemil.slide import open_slide, read_thumbnail
    from slidemil.store import read_features

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for fold_dir in map(Path, fold_dirs):
        fold = int(fold_dir.name.removeprefix("fold"))
        pred = pd.read_csv(fold_dir / "predictions.csv", dtype={"slide_id": str}).set_index("slide_id")
        prob_col = [c for c in pred.columns if c.startswith("prob_")][-1]  # last class = positive
        with np.load(fold_dir / "attention.npz") as att:
            scores = {k: att[k] for k in att.files}
        for i, (sid, s) in enumerate(sorted(scores.items())):
            feats = read_features(Path(features_dir) / f"{sid}.zarr")
            tile0 = float(zarr.open_group(feats.attrs["tiles_store"], mode="r").attrs["tile_size_level0"])
            ann = annotations.get(sid)
            labels = tile_labels(feats.coords, tile0, ann) if ann and Path(ann).exists() else None
            inst_auc = auc_binary(labels, s) if labels is not None else np.nan
            rows.append({"slide_id": sid, "fold": fold, "label": pred.at[sid, "label"],
                         "prob": float(pred.at[sid, prob_col]), "n_tiles": len(s),
                         "n_tumour_tiles": int(labels.sum()) if labels is not None else np.nan,
                         "instance_auc": inst_auc})
            if i < max_slides:
                slide = open_slide(samples.at[sid, "path"])
                thumb, ds = read_thumbnail(slide, 1024)
                lesions = load_polygons(ann)[0] if ann and Path(ann).exists() else []
                title = (f"{sid} ({pred.at[sid, 'label']}), fold {fold}: p={rows[-1]['prob']:.2f}"
                         + (f", instance AUC {inst_auc:.2f}" if inst_auc == inst_auc else ""))
                draw_heatmap(thumb, ds, feats.coords, tile0, s, title, out_dir / f"{sid}.png", lesions)
    table = pd.DataFrame(rows)
    table.to_csv(out_dir / "instance_metrics.csv", index=False)
    return table

