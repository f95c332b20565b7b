"""A model's evidence per test slide: heatmaps, QuPath detections, instance AUC and lesion FROC.

A MIL model's instance scores (ABMIL attention, or per-instance logits) are drawn over the slide
thumbnail (PNGs of a few test slides per fold, for the report) and written for every test slide as
GeoJSON tile detections with measurements, which QuPath opens over the slide. Where the slide has
an annotation (GeoJSON polygons, or a Camelyon16 ASAP XML), tiles whose centre lies inside a lesion
are positives: the scores' instance AUC says whether the model looks at the tumour, and the
Camelyon16 lesion-level FROC (slidemil.evaluate.froc) whether its top tiles find each lesion. The training
curves of the same runs are drawn too.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from slidemil.cohorts.annotations import load_polygons, tile_labels
from slidemil.evaluate.froc import (FP_RATES, FrocParams, SlideHits, detection_confidence, froc_curve, froc_summary,
                           lesion_mask, local_maxima, match_detections)
from slidemil.files import atomic_path
from slidemil.evaluate.metrics import auc_binary

log = logging.getLogger(__name__)


def score_ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of each score within the slide scaled to [0, 1] (ties broken by order) [N]."""
    return np.argsort(np.argsort(scores)) / max(len(scores) - 1, 1)


def draw_heatmap(thumb: np.ndarray, downsample: float, coords: np.ndarray, tile_size0: float,
                 scores: np.ndarray, title: str, out_png: str | Path,
                 lesions: Sequence[np.ndarray] = ()) -> None:
    """Scores (rank-normalised within the slide) as coloured tiles over the thumbnail."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(7, 7 * thumb.shape[0] / thumb.shape[1] + 0.6))
    ax.imshow(thumb)
    if len(scores):
        side = tile_size0 / downsample
        boxes = [Rectangle((x / downsample, y / downsample), side, side) for x, y in coords]
        pc = PatchCollection(boxes, cmap="turbo", alpha=0.5, linewidth=0)  # high = red, stands out
        pc.set_array(score_ranks(scores))
        ax.add_collection(pc)
        fig.colorbar(pc, ax=ax, fraction=0.03, label="score rank within slide")
    for poly in lesions:
        ax.plot(poly[:, 0] / downsample, poly[:, 1] / downsample, color="black", linewidth=1.5)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    with atomic_path(Path(out_png)) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def tile_geojson(coords: np.ndarray, tile_size0: float, measurements: dict[str, np.ndarray]) -> dict:
    """Tiles as a GeoJSON FeatureCollection of QuPath detections with measurements.

    coords: int [N, 2] level-0 (x, y) top-left corners; measurements: name -> [N] values. Each tile
    is a square Polygon in level-0 pixels (QuPath's image coordinates: origin top-left, y down);
    properties follow QuPath >= 0.4 (objectType, measurements as a name -> number map). Values keep
    6 significant digits; non-finite ones are left out (JSON has no NaN).
    """
    def num(v: float) -> float | int:  # 6 significant digits, integers bare: a cohort's files stay small
        return int(v) if float(v).is_integer() else float(f"{v:.6g}")

    s = float(tile_size0)
    names = list(measurements)
    values = np.column_stack([np.asarray(measurements[k], float) for k in names] or [np.empty((len(coords), 0))])
    features = []
    for (x, y), row in zip(np.asarray(coords, float), values):
        ring = [[num(px), num(py)] for px, py in ((x, y), (x + s, y), (x + s, y + s), (x, y + s), (x, y))]
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "detection",
                           "measurements": {k: num(v) for k, v in zip(names, row) if np.isfinite(v)}},
        })
    return {"type": "FeatureCollection", "features": features}


def write_json(obj: dict, path: str | Path) -> None:
    """Compact JSON, written atomically."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(obj, separators=(",", ":")))


def run_index(run_dir: Path) -> tuple[int, int | None]:
    """(fold, seed) of a MIL run dir .../fold{k}[/seed{s}] (seed None in the layout without seeds)."""
    fold = re.findall(r"^fold(\d+)$", "\n".join(run_dir.parts), re.M)
    seed = re.findall(r"^seed(\d+)$", "\n".join(run_dir.parts), re.M)
    if not fold:
        raise ValueError(f"{run_dir}: no fold<k> component in a MIL run directory")
    return int(fold[-1]), int(seed[-1]) if seed else None


def pick_slides(pred: pd.DataFrame, n: int, negative: str | None) -> list[str]:
    """Up to n test slides worth a picture: the most confident positives and the most tumour-like
    negatives, alternating. pred: index slide_id, columns label, prob."""
    by_prob = pred.sort_values("prob", ascending=False, kind="stable")
    pos = [s for s, lab in by_prob["label"].items() if lab != negative]
    neg = [s for s, lab in by_prob["label"].items() if lab == negative]
    order = [s for pair in zip(pos, neg) for s in pair]
    order += [s for s in pos + neg if s not in order]
    return order[:n]


def plot_training_curves(run_dirs: Sequence[Path], title: str, out_png: str | Path) -> None:
    """Train/val loss and val AUC per epoch of each run (history.csv: epoch, train_loss, val_loss, val_auc)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(9, 3.4))
    colours = plt.get_cmap("tab10")
    drawn = 0
    for k, run in enumerate(run_dirs):
        path = Path(run) / "history.csv"
        if not path.exists():
            log.warning("%s: no history.csv; left out of the training curves", run)
            continue
        h = pd.read_csv(path)
        fold, seed = run_index(Path(run))
        name = f"fold {fold}" + (f" seed {seed}" if seed is not None else "")
        c = colours(k % 10)
        ax_loss.plot(h["epoch"], h["train_loss"], color=c, label=f"{name} train")
        if "val_loss" in h:
            ax_loss.plot(h["epoch"], h["val_loss"], color=c, linestyle="--", label=f"{name} val")
        if "val_auc" in h:
            ax_auc.plot(h["epoch"], h["val_auc"], color=c, label=name)
        drawn += 1
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss (solid: train, dashed: validation)")
    ax_auc.set(xlabel="epoch", ylabel="validation AUC", title="validation AUC", ylim=(0, 1.02))
    if drawn:
        ax_auc.legend(fontsize=7, loc="lower right")
    else:
        ax_loss.text(0.5, 0.5, "no training history", ha="center", transform=ax_loss.transAxes)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(Path(out_png)) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def _slide_geometry(attrs: dict, coords: np.ndarray, tile0: float) -> tuple[int, int, float]:
    """(width, height, mpp) of the slide at level 0 from its tile store's attrs."""
    mpp = attrs.get("slide_mpp") or attrs["target_mpp"] * attrs["tile_size"] / tile0
    far = coords.max(0) + tile0 if len(coords) else np.zeros(2)
    return int(attrs.get("width") or far[0]), int(attrs.get("height") or far[1]), float(mpp)


def heatmaps_for_model(run_dirs: Sequence[str | Path], features_dir: str | Path, samples: pd.DataFrame,
                       annotations: dict[str, str], out_dir: str | Path, png_per_fold: int = 2,
                       froc: FrocParams = FrocParams(), title: str | None = None) -> pd.DataFrame:
    """Evidence of one (encoder, model) over the test slides of its runs, written under out_dir:

    - instance_metrics.csv: slide_id, fold, seed, label, prob, n_tiles, n_tumour_tiles, instance_auc
      (nan without annotation or without both tile classes); returned.
    - geojson/{slide}.geojson for every test slide: tiles as QuPath detections with measurements
      attention (the raw instance score), attention_rank (0-1 within the slide), score (the FROC
      confidence: slide probability x min-max scaled attention) and, where annotated, tumour (0/1).
    - png/{slide}.png for up to `png_per_fold` test slides per run (slidemil.evaluate.heatmaps.pick_slides).
    - froc.csv (one row: slidemil.evaluate.froc.froc_summary + the slides left out and the FROC params) and
      froc_curve.csv (threshold, fps_per_slide, sensitivity).
    - training_curves.png of the runs.

    run_dirs: MIL runs (results/mil/{encoder}/{model}/fold{k}[/seed{s}]: predictions.csv + attention.npz
    (+ history.csv)). A slide counts in the FROC when annotated (lesions from its polygons, possibly
    none) or labelled with the negative class (lesion-free); positive slides without an annotation
    are left out, as are all slides of a task with more than two classes.
    """
    import zarr

    from slidemil.slides.slide import open_slide, read_thumbnail
    from slidemil.slides.store import read_features

    out_dir = Path(out_dir)
    png_dir, geo_dir = out_dir / "png", out_dir / "geojson"
    png_dir.mkdir(parents=True, exist_ok=True)
    geo_dir.mkdir(parents=True, exist_ok=True)
    run_dirs = [Path(r) for r in run_dirs]
    rows, hits, left_out = [], [], []
    for run in run_dirs:
        fold, seed = run_index(run)
        pred = pd.read_csv(run / "predictions.csv", dtype={"slide_id": str}).set_index("slide_id")
        prob_cols = [c for c in pred.columns if c.startswith("prob_")]
        binary = len(prob_cols) == 2
        negative = prob_cols[0].removeprefix("prob_") if binary else None
        pred["prob"] = pred[prob_cols[-1]]  # last class = positive
        with np.load(run / "attention.npz") as att:
            scores = {k: att[k] for k in att.files}
        pictured = set(pick_slides(pred.loc[sorted(scores)], png_per_fold, negative))
        for sid, s in sorted(scores.items()):
            # a fold-trained encoder's features live per fold: features_dir may hold "{fold}"
            feats = read_features(Path(str(features_dir).format(fold=fold)) / f"{sid}.zarr")
            tiles_attrs = dict(zarr.open_group(feats.attrs["tiles_store"], mode="r").attrs)
            tile0 = float(tiles_attrs["tile_size_level0"])
            ann = annotations.get(sid)
            ann = ann if ann and Path(ann).exists() else None
            labels = tile_labels(feats.coords, tile0, ann) if ann else None
            label, prob = pred.at[sid, "label"], float(pred.at[sid, "prob"])
            inst_auc = auc_binary(labels, s) if labels is not None else np.nan
            rows.append({"slide_id": sid, "fold": fold, "seed": seed, "label": label, "prob": prob,
                         "n_tiles": len(s), "n_tumour_tiles": int(labels.sum()) if labels is not None else np.nan,
                         "instance_auc": inst_auc})
            confidence = detection_confidence(s, prob)
            meas = {"attention": s, "attention_rank": score_ranks(s), "score": confidence}
            if labels is not None:
                meas["tumour"] = labels
            write_json(tile_geojson(feats.coords, tile0, meas), geo_dir / f"{sid}.geojson")
            if binary and (ann or label == negative):
                mask = None
                if ann:
                    width, height, mpp = _slide_geometry(tiles_attrs, feats.coords, tile0)
                    mask = lesion_mask(*load_polygons(ann), width, height, mpp, froc)
                keep = local_maxima(feats.grid, s, froc.nms_radius)
                hits.append(match_detections(feats.coords[keep] + tile0 / 2, confidence[keep], mask))
            else:
                left_out.append(sid)
            if sid in pictured:
                thumb, ds = read_thumbnail(open_slide(samples.at[sid, "path"]), 1024)
                title_ = (f"{sid} ({label}), fold {fold}: p={prob:.2f}"
                          + (f", instance AUC {inst_auc:.2f}" if inst_auc == inst_auc else ""))
                draw_heatmap(thumb, ds, feats.coords, tile0, s, title_, png_dir / f"{sid}.png",
                             load_polygons(ann)[0] if ann else [])
    table = pd.DataFrame(rows, columns=["slide_id", "fold", "seed", "label", "prob", "n_tiles",
                                        "n_tumour_tiles", "instance_auc"])
    with atomic_path(out_dir / "instance_metrics.csv") as tmp:
        table.to_csv(tmp, index=False)
    write_froc(hits, left_out, froc, out_dir)
    plot_training_curves(run_dirs, title or " / ".join(out_dir.parts[-2:]), out_dir / "training_curves.png")
    return table


def write_froc(hits: Sequence[SlideHits], left_out: Sequence[str], params: FrocParams, out_dir: Path) -> dict:
    """froc.csv (summary row) and froc_curve.csv under out_dir; returns the summary row."""
    row = froc_summary(hits, FP_RATES)
    row["n_slides_left_out"] = len(left_out)
    row.update({k: ("" if v is None else v) for k, v in asdict(params).items()})
    if left_out:
        log.info("FROC leaves out %d test slides (positive without annotation, or not a binary task): %s",
                 len(left_out), ", ".join(left_out[:10]) + (" ..." if len(left_out) > 10 else ""))
    with atomic_path(out_dir / "froc.csv") as tmp:
        pd.DataFrame([row]).to_csv(tmp, index=False)
    curve = froc_curve(hits) if hits else pd.DataFrame(columns=["threshold", "fps_per_slide", "sensitivity"])
    with atomic_path(out_dir / "froc_curve.csv") as tmp:
        curve.to_csv(tmp, index=False)
    return row
