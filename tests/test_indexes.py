"""Feature and graph indexes: one row per sheet slide, read from each store, and a clear error for a gap."""

from pathlib import Path

import numpy as np
import pandas as pd

from slidemil.cli import main
from slidemil.slides.graph import save_graph
from slidemil.slides.store import write_features


def _sheet(tmp_path: Path, slides: list[str]) -> Path:
    sheet = tmp_path / "samples.tsv"
    rows = [f"{s}\t{s}.tiff\t{'tumor' if i % 2 else 'normal'}\tp{i}" for i, s in enumerate(slides)]
    sheet.write_text("slide_id\tpath\tlabel\tpatient_id\n" + "\n".join(rows) + "\n")
    return sheet


def _store(d: Path, slide: str, n: int, **attrs) -> None:
    grid = np.stack([np.arange(n), np.zeros(n)], 1)
    write_features(d / f"{slide}.zarr", np.ones((n, 4)), grid * 224, grid, {"slide_id": slide, **attrs})


def test_features_index_rows_in_sheet_order(tmp_path):
    d = tmp_path / "features"
    _store(d, "b", 3, status="ok", reason="")
    _store(d, "a", 0, status="failed", reason="unreadable slide")
    out = d / "index.tsv"
    assert main(["features-index", "--features-dir", str(d), "--samples", str(_sheet(tmp_path, ["b", "a"])),
                 "--out", str(out)]) == 0
    table = pd.read_csv(out, sep="\t", keep_default_na=False)
    assert table.to_dict("records") == [{"slide_id": "b", "n_tiles": 3, "status": "ok", "reason": ""},
                                        {"slide_id": "a", "n_tiles": 0, "status": "failed",
                                         "reason": "unreadable slide"}]
    assert not list(d.glob(".index.tsv.tmp-*"))  # written atomically


def test_graphs_index_counts_tiles_and_edges(tmp_path):
    d = tmp_path / "graphs"
    edges = save_graph(d / "s1.npz", np.array([[0, 0], [1, 0], [5, 5]]), radius=1)
    out = d / "index.tsv"
    assert main(["graphs-index", "--graphs-dir", str(d), "--samples", str(_sheet(tmp_path, ["s1"])),
                 "--out", str(out)]) == 0
    table = pd.read_csv(out, sep="\t")
    assert table.to_dict("records") == [{"slide_id": "s1", "n_tiles": 3, "n_edges": edges}]
    assert edges == 2  # the two neighbours link both ways; the far tile has none


def test_index_names_the_missing_store_and_the_fix(tmp_path, capsys):
    d = tmp_path / "features"
    _store(d, "a", 2)
    out = d / "index.tsv"
    assert main(["features-index", "--features-dir", str(d), "--samples", str(_sheet(tmp_path, ["a", "gone"])),
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{d / 'gone.zarr'}: missing features of slide gone" in err and "run the embed stage" in err
    assert not out.exists()
