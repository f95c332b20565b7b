"""The linear probe: fitted on training slides' tiles only, scored on test tiles, labels from GeoJSON."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import zarr

from slidemil.evaluate.probe import PROBE_COLUMNS, probe_encoder, write_probe_row, write_probe_table
from slidemil.slides.store import write_features

GRID = np.array([[i, j] for j in range(6) for i in range(6)])  # 6 x 6 tiles of 100 px
TUMOUR = [[0, 0], [300, 0], [300, 300], [0, 300], [0, 0]]  # the 3 x 3 tiles of the top-left corner
MIMIC = [[300, 300], [600, 300], [600, 600], [300, 600], [300, 300]]  # the bottom-right 3 x 3


def _polygon(path, ring):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    return str(path)


def _cohort(tmp_path, signal: float, n: int = 12):
    """n slides alternating negative/positive; positive slides' tumour tiles are shifted by `signal`
    along dimension 0, every slide's bottom-right corner is a mimic (shifted along dimension 1)."""
    rng = np.random.default_rng(0)
    tiles = tmp_path / "tiles.zarr"
    zarr.open_group(str(tiles), mode="w").attrs["tile_size_level0"] = 100
    labels, annotations, rows = {}, {}, []
    in_tumour = (GRID < 3).all(1)
    in_mimic = (GRID >= 3).all(1)
    for i in range(n):
        sid, pos = f"s{i}", i % 2
        x = rng.normal(size=(len(GRID), 4))
        x[:, 0] += signal * (in_tumour & bool(pos))
        x[:, 1] += 3.0 * in_mimic
        write_features(tmp_path / "feat" / f"{sid}.zarr", x, GRID * 100, GRID, {"tiles_store": str(tiles)})
        labels[sid] = pos
        ann = _polygon(tmp_path / f"{sid}.geojson", TUMOUR if pos else [[0, 0], [1, 0], [1, 1], [0, 0]])
        _polygon(tmp_path / f"{sid}.mimic.geojson", MIMIC)
        annotations[sid] = ann
        rows.append({"slide_id": sid, "fold": 0, "role": "test" if i < 4 else "train"})
    folds = tmp_path / "folds.csv"
    pd.DataFrame(rows).to_csv(folds, index=False)
    return str(tmp_path / "feat"), folds, labels, annotations


def test_probe_finds_separable_tumour_and_only_scores_test_tiles(tmp_path):
    feat, folds, labels, ann = _cohort(tmp_path, signal=6.0)
    row = probe_encoder("enc", feat, folds, labels, ann, n_boot=50)
    assert row["tile_auc"] > 0.99 and row["tile_auc_vs_mimic"] > 0.99
    assert row["n_test_slides"] == 4 and row["n_test_tiles"] == 4 * 36
    assert row["n_test_tumour_tiles"] == 2 * 9 and row["n_test_mimic_tiles"] == 4 * 9
    assert row["tile_auc_ci_lo"] <= row["tile_auc"] <= row["tile_auc_ci_hi"]


def test_probe_on_features_without_signal_is_near_chance_and_positive_slides_need_annotations(tmp_path):
    feat, folds, labels, ann = _cohort(tmp_path, signal=0.0)
    row = probe_encoder("enc", feat, folds, labels, ann, n_boot=50)
    assert 0.3 < row["tile_auc"] < 0.7
    # a positive test slide without an annotation has unknown tile labels: left out, not all-normal
    ann.pop("s1")
    assert probe_encoder("enc", feat, folds, labels, ann, n_boot=10)["n_test_slides"] == 3


def test_probe_rows_gather_into_one_table(tmp_path):
    feat, folds, labels, ann = _cohort(tmp_path, signal=6.0)
    write_probe_row(probe_encoder("a", feat, folds, labels, ann, n_boot=10), tmp_path / "a.csv")
    write_probe_row(probe_encoder("b", feat, folds, labels, {}, n_boot=10), tmp_path / "b.csv")
    table = write_probe_table([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "probe.csv")
    assert list(table.columns) == PROBE_COLUMNS and list(table["encoder"]) == ["a", "b"]
    # without annotations no training tile is tumour: no probe, and no number rather than a wrong one
    assert table["n_test_slides"].tolist() == [4, 0] and np.isnan(table.loc[1, "tile_auc"])
