import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from slidemil.cohorts.annotations import load_polygons, tile_labels
from slidemil.evaluate.froc import FrocParams
from slidemil.evaluate.heatmaps import heatmaps_for_model, pick_slides, run_index, tile_geojson
from slidemil.slides.store import atomic_dir, write_features, write_index_arrays

SQUARE = [[0, 0], [200, 0], [200, 200], [0, 200], [0, 0]]
GRID = np.array([[i, j] for j in range(4) for i in range(4)])  # 4 x 4 tiles of 100 px
COORDS = GRID * 100
IN_SQUARE = (GRID < 2).all(1)  # the 2 x 2 tiles whose centres lie in SQUARE


def _geojson(path, ring=SQUARE, hole=None):
    rings = [ring] + ([hole] if hole else [])
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": rings}}]}))
    return path


def test_tile_labels_use_tile_centres_and_holes(tmp_path):
    coords = np.array([[0, 0], [100, 100], [300, 300], [40, 40]])
    ann = _geojson(tmp_path / "a.geojson", hole=[[50, 50], [150, 50], [150, 150], [50, 150], [50, 50]])
    # tile size 50: centres (25,25) in, (125,125) in the hole, (325,325) out, (65,65) in the hole
    assert tile_labels(coords, 50, ann).tolist() == [1, 0, 0, 0]
    lesions, holes = load_polygons(ann)
    assert len(lesions) == 1 and len(holes) == 1


def test_tile_geojson_is_qupath_detections_with_measurements():
    coords = np.array([[0, 0], [256, 512]])
    geo = tile_geojson(coords, 256.0, {"attention": np.array([0.25, 0.75]), "score": np.array([0.1, np.nan])})
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 2
    f = geo["features"][1]
    assert f["type"] == "Feature" and f["properties"]["objectType"] == "detection"
    assert f["geometry"] == {"type": "Polygon", "coordinates": [[[256, 512], [512, 512], [512, 768], [256, 768],
                                                                  [256, 512]]]}
    assert f["properties"]["measurements"] == {"attention": 0.75}  # NaN is not JSON: left out
    json.dumps(geo, allow_nan=False)


def test_run_index_reads_fold_and_seed():
    assert run_index(Path("results/mil/e/abmil/fold3/seed2")) == (3, 2)
    assert run_index(Path("results/mil/e/abmil/fold1")) == (1, None)
    with pytest.raises(ValueError):
        run_index(Path("results/mil/e/abmil"))


def test_pick_slides_alternates_confident_positives_and_tumour_like_negatives():
    pred = pd.DataFrame({"label": ["t", "n", "t", "n", "t"], "prob": [0.6, 0.9, 0.8, 0.1, 0.2]},
                        index=["a", "b", "c", "d", "e"])
    assert pick_slides(pred, 3, "n") == ["c", "b", "a"]
    assert pick_slides(pred, 10, "n") == ["c", "b", "a", "d", "e"]


def _slide_stores(tmp_path: Path, sid: str) -> None:
    tiles = tmp_path / "tiles" / f"{sid}.zarr"
    with atomic_dir(tiles) as t:
        g = zarr.open_group(t, mode="w", zarr_format=3)
        write_index_arrays(g, COORDS, GRID)
        g.attrs.update(tile_size_level0=100.0, slide_mpp=0.5, width=1536, height=1024)
    write_features(tmp_path / "feat" / f"{sid}.zarr", np.zeros((16, 4)), COORDS, GRID, {"tiles_store": str(tiles)})


@pytest.fixture
def model_run(small_slide, tmp_path):
    """One run (fold0/seed0) with three test slides: s (tumour, annotated), n (normal), p (tumour, no annotation)."""
    slide, _ = small_slide
    for sid in "snp":
        _slide_stores(tmp_path, sid)
    run = tmp_path / "mil" / "fold0" / "seed0"
    run.mkdir(parents=True)
    pd.DataFrame({"slide_id": list("snp"), "label": ["tumour", "normal", "tumour"], "role": ["test"] * 3,
                  "prob_normal": [0.2, 0.1, 0.4], "prob_tumour": [0.8, 0.9, 0.6]}).to_csv(run / "predictions.csv",
                                                                                         index=False)
    att = {"s": np.where(IN_SQUARE, 0.2, 0.01), "n": np.r_[0.5, np.full(15, 0.1)], "p": np.linspace(0, 1, 16)}
    with open(run / "attention.npz", "wb") as fh:
        np.savez(fh, **att)
    pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.7, 0.5, 0.4], "val_loss": [0.7, 0.6, 0.6],
                  "val_auc": [0.5, 0.7, 0.8]}).to_csv(run / "history.csv", index=False)
    samples = pd.DataFrame({"slide_id": list("snp"), "path": [str(slide)] * 3}).set_index("slide_id", drop=False)
    ann = {"s": str(_geojson(tmp_path / "s.geojson"))}
    return run, samples, ann, att


def test_heatmaps_write_metrics_pictures_geojson_and_curves(model_run, tmp_path):
    run, samples, ann, att = model_run
    out = tmp_path / "out"
    table = heatmaps_for_model([run], tmp_path / "feat", samples, ann, out, png_per_fold=2)
    s = table.set_index("slide_id").loc["s"]
    assert s["instance_auc"] == 1.0 and s["n_tumour_tiles"] == 4 and (s["fold"], s["seed"]) == (0, 0)
    # the most confident positive and the most tumour-like negative are pictured; p is GeoJSON only
    assert sorted(p.name for p in (out / "png").glob("*.png")) == ["n.png", "s.png"]
    assert (out / "png" / "s.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "geojson").iterdir()) == ["n.geojson", "p.geojson", "s.geojson"]
    geo = json.loads((out / "geojson" / "s.geojson").read_text())
    assert len(geo["features"]) == 16
    for f, (x, y), a, inside in zip(geo["features"], COORDS, att["s"], IN_SQUARE):
        assert f["properties"]["objectType"] == "detection"
        assert f["geometry"]["coordinates"][0][0] == [x, y] and f["geometry"]["coordinates"][0][2] == [x + 100, y + 100]
        m = f["properties"]["measurements"]
        assert m["attention"] == pytest.approx(a) and m["tumour"] == int(inside)
        assert m["score"] == pytest.approx(0.8 if inside else 0.0)  # slide prob x min-max attention
    assert "tumour" not in json.loads((out / "geojson" / "n.geojson").read_text())["features"][0]["properties"][
        "measurements"]
    assert (out / "training_curves.png").stat().st_size > 1000
    assert (out / "instance_metrics.csv").exists()


def test_heatmaps_froc_counts_the_negative_slide_and_leaves_out_the_unannotated_positive(model_run, tmp_path):
    run, samples, ann, _ = model_run
    out = tmp_path / "out"
    heatmaps_for_model([run], tmp_path / "feat", samples, ann, out, png_per_fold=0, froc=FrocParams(itc_um=None))
    froc = pd.read_csv(out / "froc.csv").iloc[0]
    assert (froc["n_slides"], froc["n_lesions"], froc["n_slides_left_out"]) == (2, 1, 1)
    # n's top tile (0.9) is a false positive before s's lesion (0.8) is found: 0.5 FP/slide at 0 sensitivity,
    # then the lesion at 0.5 FP/slide; below 0.5 FP/slide sensitivity is 0, from 0.5 on it is 1
    assert froc["sens_0.25fp"] == 0 and froc["sens_0.5fp"] == 1 and froc["sens_8fp"] == 1
    assert froc["froc"] == pytest.approx(5 / 6)
    curve = pd.read_csv(out / "froc_curve.csv")
    assert curve.loc[1:2, "threshold"].tolist() == pytest.approx([0.9, 0.8])
    assert not list((out / "png").glob("*.png"))
