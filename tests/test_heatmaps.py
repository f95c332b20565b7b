import json

import numpy as np
import pandas as pd
import zarr

from slidemil.heatmaps import heatmaps_for_model, load_polygons, tile_labels
from slidemil.store import atomic_dir, write_features, write_index_arrays

SQUARE = [[0, 0], [200, 0], [200, 200], [0, 200], [0, 0]]


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


def test_instance_auc_and_heatmap_png(small_slide, tmp_path):
    slide, _ = small_slide
    grid = np.array([[i, j] for j in range(4) for i in range(4)])
    coords = grid * 100
    tiles = tmp_path / "s.zarr"
    with atomic_dir(tiles) as t:
        g = zarr.open_group(t, mode="w", zarr_format=3)
        write_index_arrays(g, coords, grid)
        g.attrs["tile_size_level0"] = 100.0
    write_features(tmp_path / "feat" / "s.zarr", np.zeros((16, 4)), coords, grid, {"tiles_store": str(tiles)})
    fold = tmp_path / "fold0"
    fold.mkdir()
    pd.DataFrame({"slide_id": ["s"], "label": ["tumour"], "role": ["test"], "prob_normal": [0.2],
                  "prob_tumour": [0.8]}).to_csv(fold / "predictions.csv", index=False)
    ann = _geojson(tmp_path / "s.geojson")  # covers the 2 x 2 tiles at the origin
    inside = (grid < 2).all(1)
    with open(fold / "attention.npz", "wb") as fh:
        np.savez(fh, s=np.where(inside, 0.2, 0.01))
    samples = pd.DataFrame({"slide_id": ["s"], "path": [str(slide)]}).set_index("slide_id", drop=False)
    table = heatmaps_for_model([fold], tmp_path / "feat", samples, {"s": str(ann)}, tmp_path / "out")
    assert table.loc[0, "instance_auc"] == 1.0 and table.loc[0, "n_tumour_tiles"] == 4
    assert (tmp_path / "out" / "s.png").stat().st_size > 1000
    assert (tmp_path / "out" / "instance_metrics.csv").exists()
