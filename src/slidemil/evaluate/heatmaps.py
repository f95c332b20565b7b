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


SCALE_BAR_UM = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)  # round lengths a scale bar may take
OUTLINE_COLOURS = {"tumour": "black", "mimic": "magenta"}  # annotation class -> outline colour (heatmap PNG)
QUPATH_COLOURS = {"tumour": [200, 0, 0], "mimic": [200, 0, 200], "exclusion": [80, 80, 80]}  # RGB in QuPath


def scale_bar_um(width_um: float) -> float:
    """The longest round length (SCALE_BAR_UM) within a quarter of the picture's width, in microns."""
    fits = [u for u in SCALE_BAR_UM if u <= width_um / 4]
    return float(fits[-1] if fits else SCALE_BAR_UM[0])


def closed(ring: np.ndarray) -> np.ndarray:
    """A polygon's vertices [K, 2] with the first repeated at the end (drawn and written as a closed ring)."""
    ring = np.asarray(ring, float)
    return ring if len(ring) and np.array_equal(ring[0], ring[-1]) else np.vstack([ring, ring[:1]])


def draw_heatmap(thumb: np.ndarray, downsample: float, coords: np.ndarray, tile_size0: float,
                 scores: np.ndarray, title: str, out_png: str | Path, mpp: float,
                 outlines: dict[str, Sequence[np.ndarray]] | None = None, long_side_px: int = 1200) -> None:
    """Tile scores in [0, 1] over the thumbnail on a fixed 0-1 colour scale, with its colour bar.

    A fixed scale, not the rank within the slide: a slide the model calls normal stays cold, so the
    pictures of a tumour and of a normal slide compare. Tiles are semi-transparent over the tissue;
    `outlines` (annotation class -> level-0 polygons) are drawn closed; the scale bar's length comes
    from `mpp` (level-0 microns per pixel). The PNG is `long_side_px` on its longer side.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import PatchCollection
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    dpi, h, w = 100, thumb.shape[0], thumb.shape[1]
    long_in = long_side_px / dpi
    fig = plt.figure(figsize=(long_in, long_in * h / w) if w >= h else (long_in * w / h, long_in), dpi=dpi)
    ax = fig.add_axes((0.02, 0.04, 0.86, 0.90))
    ax.imshow(thumb)
    norm, cmap = Normalize(0.0, 1.0), plt.get_cmap("turbo")
    if len(scores):
        side = tile_size0 / downsample
        boxes = [Rectangle((x / downsample, y / downsample), side, side) for x, y in coords]
        pc = PatchCollection(boxes, cmap=cmap, norm=norm, alpha=0.45, linewidth=0)  # the tissue shows through
        pc.set_array(np.clip(np.asarray(scores, float), 0, 1))
        ax.add_collection(pc)
    bar = fig.add_axes((0.90, 0.15, 0.025, 0.70))
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=bar, label="tumour score (fixed scale)")
    for name, polys in (outlines or {}).items():
        for poly in polys:
            ring = closed(poly) / downsample
            ax.plot(ring[:, 0], ring[:, 1], color=OUTLINE_COLOURS.get(name, "black"), linewidth=1.5)
    um_per_px = mpp * downsample
    length_um = scale_bar_um(w * um_per_px)
    x0, y0 = w * 0.03, h * 0.96
    ax.add_patch(Rectangle((x0, y0 - h * 0.012), length_um / um_per_px, h * 0.012, color="black"))
    ax.text(x0, y0 - h * 0.02, f"{length_um:g} µm" if length_um < 1000 else f"{length_um / 1000:g} mm",
            fontsize=9, va="bottom")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_title(title, fontsize=10)
    ax.axis("off")
    with atomic_path(Path(out_png)) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


def annotation_features(outlines: dict[str, Sequence[np.ndarray]],
                        holes: Sequence[np.ndarray] = ()) -> list[dict]:
    """Annotation outlines as QuPath annotations (objectType annotation) classified by their class
    name (tumour, mimic); `holes` (regions excluded from a lesion) are classified "exclusion"."""
    def ring(poly: np.ndarray) -> list[list[float]]:
        return [[float(f"{x:.6g}"), float(f"{y:.6g}")] for x, y in closed(poly)]

    items = [(name, poly) for name, polys in outlines.items() for poly in polys]
    items += [("exclusion", poly) for poly in holes]
    return [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring(poly)]},
             "properties": {"objectType": "annotation", "isLocked": True,
                            "classification": {"name": name, "color": QUPATH_COLOURS.get(name, [0, 0, 0])}}}
            for name, poly in items if len(poly) >= 3]


def tile_geojson(coords: np.ndarray, tile_size0: float, measurements: dict[str, np.ndarray],
                 outlines: dict[str, Sequence[np.ndarray]] | None = None,
                 holes: Sequence[np.ndarray] = ()) -> dict:
    """Tiles as a GeoJSON FeatureCollection of QuPath detections with measurements, and the slide's
    annotation outlines as QuPath annotations with their classification (annotation_features).

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
    features = annotation_features(outlines or {}, holes)
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


def slide_outlines(sid: str, tumour: dict[str, str], mimic: dict[str, str]
                   ) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray]]:
    """({"tumour": polygons, "mimic": polygons}, holes) of a slide's annotation files that exist."""
    outlines: dict[str, list[np.ndarray]] = {}
    holes: list[np.ndarray] = []
    for name, table in (("tumour", tumour), ("mimic", mimic)):
        path = table.get(sid)
        if path and Path(path).exists():
            outlines[name], excluded = load_polygons(path)
            holes += excluded
    return outlines, holes


def heatmaps_for_model(run_dirs: Sequence[str | Path], features_dir: str | Path, samples: pd.DataFrame,
                       annotations: dict[str, str], out_dir: str | Path, png_per_fold: int = 2,
                       froc: FrocParams = FrocParams(), title: str | None = None,
                       mimics: dict[str, str] | None = None) -> pd.DataFrame:
    """Evidence of one (encoder, model) over the test slides of its runs, written under out_dir:

    - instance_metrics.csv: slide_id, fold, seed, label, prob, n_tiles, n_tumour_tiles, instance_auc
      (nan without annotation or without both tile classes); returned.
    - geojson/{slide}.geojson for every test slide: tiles as QuPath detections with measurements
      attention (the raw instance score), attention_rank (0-1 within the slide), score (the FROC
      confidence: slide probability x min-max scaled attention) and, where annotated, tumour (0/1);
      the slide's tumour (`annotations`) and mimic (`mimics`) outlines as classified annotations.
    - png/{slide}.png for up to `png_per_fold` test slides per run (slidemil.evaluate.heatmaps.pick_slides):
      the score on a fixed 0-1 scale over the slide, with the outlines.
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
            outlines, holes = slide_outlines(sid, annotations, mimics or {})
            write_json(tile_geojson(feats.coords, tile0, meas, outlines, holes), geo_dir / f"{sid}.geojson")
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
                draw_heatmap(thumb, ds, feats.coords, tile0, confidence, title_, png_dir / f"{sid}.png",
                             _slide_geometry(tiles_attrs, feats.coords, tile0)[2], outlines)
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
