import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import zarr
from PIL import Image

from slidemil.cohorts.annotations import load_polygons, tile_labels
from slidemil.evaluate.froc import FrocParams
from slidemil.evaluate.heatmaps import (closed, draw_heatmap, heatmaps_for_model, pick_slides, run_index,
                                        scale_bar_um, tile_geojson)
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
    detections = [f for f in geo["features"] if f["properties"]["objectType"] == "detection"]
    assert len(detections) == 16
    outline, = [f for f in geo["features"] if f["properties"]["objectType"] == "annotation"]
    assert outline["properties"]["classification"]["name"] == "tumour"
    assert outline["geometry"]["coordinates"] == [SQUARE]
    for f, (x, y), a, inside in zip(detections, COORDS, att["s"], IN_SQUARE):
        assert f["properties"]["objectType"] == "detection"
        assert f["geometry"]["coordinates"][0][0] == [x, y] and f["geometry"]["coordinates"][0][2] == [x + 100, y + 100]
        m = f["properties"]["measurements"]
        assert m["attention"] == pytest.approx(a) and m["tumour"] == int(inside)
        assert m["score"] == pytest.approx(0.8 if inside else 0.0)  # slide prob x min-max attention
    n_features = json.loads((out / "geojson" / "n.geojson").read_text())["features"]
    assert "tumour" not in n_features[0]["properties"]["measurements"]
    assert {f["properties"]["objectType"] for f in n_features} == {"detection"}  # n has no annotation
    assert max(Image.open(out / "png" / "s.png").size) >= 1000
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


def test_tile_geojson_carries_the_annotation_outlines_as_classified_qupath_annotations():
    open_square = [[0, 0], [200, 0], [200, 200], [0, 200]]  # ASAP and some GeoJSON leave rings open
    mimic = np.array([[300, 300], [400, 300], [400, 400], [300, 300]], float)
    hole = np.array([[50, 50], [60, 50], [60, 60]], float)
    geo = tile_geojson(COORDS[:2], 100.0, {"score": np.array([0.1, 0.2])},
                       outlines={"tumour": [np.array(open_square, float)], "mimic": [mimic]}, holes=[hole])
    annotations = [f for f in geo["features"] if f["properties"]["objectType"] == "annotation"]
    assert [f["properties"]["classification"]["name"] for f in annotations] == ["tumour", "mimic", "exclusion"]
    assert annotations[0]["geometry"] == {"type": "Polygon", "coordinates": [SQUARE]}  # closed
    assert annotations[1]["geometry"]["coordinates"] == [mimic.tolist()]  # already closed: kept as is
    assert all(len(f["properties"]["classification"]["color"]) == 3 for f in annotations)
    assert sum(f["properties"]["objectType"] == "detection" for f in geo["features"]) == 2
    json.dumps(geo, allow_nan=False)


TURBO = matplotlib.colormaps["turbo"](np.linspace(0, 1, 256))[:, :3] * 255  # [256, 3] RGB


def _warm(img: np.ndarray) -> int:
    """Pixels that read as hot (red-orange, also at half opacity over grey)."""
    r, g, b = (img[..., i].astype(int) for i in range(3))
    return int(((r - b > 60) & (r > g)).sum())


def _colour_bar_column(img: np.ndarray) -> np.ndarray | None:
    """The pixels of the first image column holding a run of >= 200 pure turbo colours (the colour bar),
    as positions on the 0-1 scale; None without one. Half-transparent tiles are never that saturated."""
    rgb = img[..., :3].astype(float)
    ys, xs = np.nonzero(rgb.max(-1) - rgb.min(-1) > 100)  # candidates: strongly saturated pixels
    dist = np.linalg.norm(rgb[ys, xs][:, None] - TURBO[None], axis=-1)  # [K, 256]
    near = dist.min(-1) < 12
    columns, counts = np.unique(xs[near], return_counts=True)
    if not (counts >= 200).any():
        return None
    col = columns[counts >= 200][0]
    return dist.argmin(-1)[near & (xs == col)] / 255


def _draw(tmp_path: Path, scores: np.ndarray, name: str) -> np.ndarray:
    thumb = np.full((512, 768, 3), 200, np.uint8)  # a grey slide, 2x downsampled from 1536 x 1024 px
    coords = np.array([[x, y] for y in range(0, 1024, 64) for x in range(0, 1536, 64)])
    draw_heatmap(thumb, 2.0, coords, 64.0, scores[: len(coords)], name, tmp_path / f"{name}.png", mpp=0.5)
    return np.asarray(Image.open(tmp_path / f"{name}.png").convert("RGB"))


def test_heatmap_uses_a_fixed_scale_so_a_low_scoring_slide_stays_cold(tmp_path):
    rng = np.random.default_rng(0)
    low = _draw(tmp_path, 0.02 + 0.03 * rng.random(384), "low")  # a slide the model calls normal
    high = _draw(tmp_path, 0.9 + 0.05 * rng.random(384), "high")
    assert max(low.shape[:2]) >= 1000
    bar = _colour_bar_column(low)
    assert bar is not None, "no colour bar"
    assert bar.min() < 0.1 and bar.max() > 0.9  # the bar spans the 0-1 scale (its darkest end is not saturated)
    # only the colour bar's hot end is hot on the low slide; the high slide is hot all over its tissue
    assert _warm(low) * 10 < _warm(high), (_warm(low), _warm(high))


def test_scale_bar_is_a_round_length_within_a_quarter_of_the_width():
    assert scale_bar_um(768) == 100  # the test slide: 1536 px at 0.5 mpp
    assert scale_bar_um(40_000) == 10_000
    assert scale_bar_um(10) == 10  # never nothing


def test_outlines_are_closed_rings():
    ring = np.array([[0, 0], [1, 0], [1, 1]], float)
    assert closed(ring).tolist() == [[0, 0], [1, 0], [1, 1], [0, 0]]
    assert closed(closed(ring)).tolist() == closed(ring).tolist()
