"""Linear probe of an encoder's tile embeddings against tumour annotations (results/probe/).

How much tumour an encoder's features carry before any MIL model sees them: per fold, a logistic
regression on the standardised features of the training slides' tiles, scored on the test slides'
tiles; the test scores of all folds are pooled into one tile AUC with a bootstrap 95% CI
(resampling test slides, since tiles of one slide are not independent). Validation slides are not
used. A fold-trained encoder is probed per fold on its own features (features_dir holds "{fold}").

Tile labels: 1 where the tile centre lies in a tumour polygon (slidemil.cohorts.annotations.tile_labels).
Negative slides without an annotation are all-normal (Camelyon16's convention); positive slides
without one are left out (their tiles' labels are unknown). Where a `<annotation>.mimic.geojson`
sits beside the annotation (the demo's benign mimics), `tile_auc_vs_mimic` is the AUC of tumour
tiles against mimic tiles only: what separates an encoder that sees morphology from one that sees
colour and layout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

PROBE_COLUMNS = ["encoder", "tile_auc", "tile_auc_ci_lo", "tile_auc_ci_hi", "tile_auc_vs_mimic",
                 "n_test_slides", "n_test_tiles", "n_test_tumour_tiles", "n_test_mimic_tiles"]


@dataclass
class ProbeSlide:
    """One slide's tile features [N, D] and labels (int [N]: tumour, mimic-not-tumour)."""

    features: np.ndarray
    tumour: np.ndarray
    mimic: np.ndarray


def mimic_path(annotation: str | Path) -> Path:
    """The mimic GeoJSON beside an annotation: a/b.geojson -> a/b.mimic.geojson."""
    return Path(annotation).with_suffix(".mimic.geojson")


def probe_slide(features_store: str | Path, annotation: str | None, positive: bool) -> ProbeSlide | None:
    """Features and tile labels of one slide; None when its labels are unknown or it has no tiles."""
    import zarr

    from slidemil.cohorts.annotations import tile_labels
    from slidemil.slides.store import read_features

    feats = read_features(features_store)
    n = len(feats.coords)
    has_ann = bool(annotation) and Path(annotation).exists()
    if n == 0 or (positive and not has_ann):
        return None
    tile0 = float(dict(zarr.open_group(feats.attrs["tiles_store"], mode="r").attrs)["tile_size_level0"])
    tumour = tile_labels(feats.coords, tile0, annotation) if has_ann else np.zeros(n, int)
    mim = mimic_path(annotation) if has_ann else None
    mimic = tile_labels(feats.coords, tile0, mim) if mim is not None and mim.exists() else np.zeros(n, int)
    return ProbeSlide(feats.features, tumour, mimic & (1 - tumour))


def _auc_or_nan(y: np.ndarray, score: np.ndarray) -> float:
    from slidemil.evaluate.metrics import auc_binary

    return auc_binary(y, score) if 0 < y.sum() < len(y) else float("nan")


def probe_scores(slides: dict[str, ProbeSlide], roles: dict[str, str], seed: int) -> dict[str, np.ndarray]:
    """Probe decision scores [N] of each test slide, fitted on the training slides' tiles."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train = [s for s, r in roles.items() if r == "train" and s in slides]
    test = [s for s, r in roles.items() if r == "test" and s in slides]
    y = np.concatenate([slides[s].tumour for s in train]) if train else np.zeros(0, int)
    if not 0 < y.sum() < len(y):
        log.warning("no tumour and normal tiles among this fold's training slides: no probe")
        return {}
    x = np.concatenate([slides[s].features for s in train])
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=1.0, max_iter=3000, random_state=seed).fit(scaler.transform(x), y)
    return {s: clf.decision_function(scaler.transform(slides[s].features)) for s in test}


def probe_encoder(encoder: str, features_dir: str, folds_csv: str | Path, labels: dict[str, int],
                  annotations: dict[str, str], seed: int = 0, n_boot: int = 1000) -> dict:
    """The probe.csv row of one encoder: pooled test-tile AUC over folds, slide-bootstrap CI.

    features_dir: the encoder's feature folder, "{fold}" filled in per fold for fold-trained ones;
    labels: slide -> class index (0 = negative); annotations: slide -> tumour GeoJSON.
    """
    folds = pd.read_csv(folds_csv, dtype={"slide_id": str, "role": str})
    per_slide: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # test slide -> (y, mimic, score)
    for k in sorted(folds["fold"].unique()):
        roles = {s: r for s, r in folds.loc[folds["fold"] == k, ["slide_id", "role"]].itertuples(index=False)
                 if r in ("train", "test")}
        fdir = Path(features_dir.format(fold=k))
        slides = {}
        for sid in roles:
            got = probe_slide(fdir / f"{sid}.zarr", annotations.get(sid), labels[sid] > 0)
            if got is not None:
                slides[sid] = got
        for sid, score in probe_scores(slides, roles, seed).items():
            per_slide[sid] = (slides[sid].tumour, slides[sid].mimic, score)
    row = {c: float("nan") for c in PROBE_COLUMNS} | {"encoder": encoder, "n_test_slides": len(per_slide)}
    if not per_slide:
        return row
    ids = sorted(per_slide)
    y, mimic, score = (np.concatenate([per_slide[s][i] for s in ids]) for i in range(3))
    m = (y == 1) | (mimic == 1)
    row.update(tile_auc=_auc_or_nan(y, score), tile_auc_vs_mimic=_auc_or_nan(y[m], score[m]),
               n_test_tiles=len(y), n_test_tumour_tiles=int(y.sum()), n_test_mimic_tiles=int(mimic.sum()))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(ids), len(ids))
        yb = np.concatenate([per_slide[ids[i]][0] for i in pick])
        sb = np.concatenate([per_slide[ids[i]][2] for i in pick])
        boots.append(_auc_or_nan(yb, sb))
    boots = np.asarray(boots)
    if np.isfinite(boots).any():
        row["tile_auc_ci_lo"], row["tile_auc_ci_hi"] = np.nanpercentile(boots, [2.5, 97.5])
    return row


def write_probe_table(rows_csvs: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """Concatenate per-encoder probe rows into one table (rounded for reading)."""
    from slidemil.files import atomic_path

    table = pd.concat([pd.read_csv(p) for p in rows_csvs], ignore_index=True)[PROBE_COLUMNS]
    with atomic_path(out_csv) as tmp:
        table.round(4).to_csv(tmp, index=False)
    return table


def write_probe_row(row: dict, out_csv: str | Path) -> None:
    from slidemil.files import atomic_path

    with atomic_path(out_csv) as tmp:
        pd.DataFrame([row], columns=PROBE_COLUMNS).to_csv(tmp, index=False)
