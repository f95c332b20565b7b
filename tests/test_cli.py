"""cli.py only parses: each command's work is one stage function, and the CLI does what it did."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from slidemil.cli import main
from slidemil.slides.graph import neighbour_graph
from slidemil.slides.store import write_index_arrays

CLI = Path(__file__).resolve().parents[1] / "src" / "slidemil" / "cli.py"


def _sheet(tmp_path: Path, split: list[str] | None = None) -> Path:
    rows = [{"slide_id": f"s{i}", "path": "x", "label": ["normal", "tumour"][i % 2], "patient_id": f"p{i}"}
            for i in range(8)]
    df = pd.DataFrame(rows)
    if split is not None:
        df["split"] = split
    df.to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    return tmp_path / "samples.tsv"


def test_official_split_asked_for_but_blank_is_a_one_line_error_naming_the_sheet(tmp_path, capsys):
    sheet = _sheet(tmp_path, ["train"] * 3 + ["test"] * 4 + [""])
    rc = main(["folds", "--samples", str(sheet), "--params", '{"use_official_split": true}',
               "--out", str(tmp_path / "folds.csv")])
    err = capsys.readouterr().err
    assert rc == 1 and f"{sheet}: evaluate.use_official_split is true" in err and "fill it" in err
    assert not (tmp_path / "folds.csv").exists()


def test_split_column_is_ignored_unless_asked_for(tmp_path):
    sheet = _sheet(tmp_path, ["train"] * 4 + ["test"] * 4)
    assert main(["folds", "--samples", str(sheet), "--params", '{"n_folds": 2}', "--out",
                 str(tmp_path / "k.csv")]) == 0
    assert sorted(pd.read_csv(tmp_path / "k.csv")["fold"].unique()) == [0, 1]
    assert main(["folds", "--samples", str(sheet), "--params", '{"use_official_split": true}', "--out",
                 str(tmp_path / "o.csv")]) == 0
    official = pd.read_csv(tmp_path / "o.csv")
    assert list(official["fold"].unique()) == [0]
    assert set(official.loc[official["role"] == "test", "slide_id"]) == {"s4", "s5", "s6", "s7"}


def test_graph_command_writes_the_store_grids_graph(tmp_path):
    grid = np.array([[0, 0], [1, 0], [0, 1], [5, 5]], np.int32)
    g = zarr.open_group(str(tmp_path / "t.zarr"), mode="w", zarr_format=3)
    write_index_arrays(g, grid * 128, grid)
    assert main(["graph", "--tiles", str(tmp_path / "t.zarr"), "--radius", "1", "--out",
                 str(tmp_path / "g.npz")]) == 0
    with np.load(tmp_path / "g.npz") as z:
        indptr, indices = z["indptr"], z["indices"]
    want = neighbour_graph(grid, 1)
    np.testing.assert_array_equal(indptr, want[0])
    np.testing.assert_array_equal(indices, want[1])
    assert len(indices) == 6  # the three touching tiles are each other's neighbours; (5, 5) has none


def test_embed_with_unpaired_outputs_is_an_error(tmp_path):
    from slidemil.encoders.embed import embed_slides
    from slidemil.encoders import EncoderSpec

    with pytest.raises(ValueError, match="2 --tiles but 1 --out"):
        embed_slides(["a.zarr", "b.zarr"], ["a.zarr"], EncoderSpec("x"), 0)


def _commands() -> list[ast.FunctionDef]:
    return [n for n in ast.parse(CLI.read_text()).body if isinstance(n, ast.FunctionDef) and n.name.startswith("cmd_")]


def test_every_stage_command_is_checked():
    assert len(_commands()) >= 20  # the parametrised test below sees every cmd_* the file defines


@pytest.mark.parametrize("fn", _commands(), ids=lambda fn: fn.name)
def test_stage_commands_call_one_stage_function_and_hold_no_logic(fn):
    control = [n for n in ast.walk(fn) if isinstance(n, (ast.For, ast.While, ast.With, ast.Try, ast.If))]
    assert control == [], f"{fn.name}: loops, branches, with or try blocks belong in the stage module"
    imports = {a.name for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert "torch" not in imports and not any(
        isinstance(n, ast.ImportFrom) and (n.module or "").startswith("torch") for n in ast.walk(fn)), fn.name
    calls = [n for n in fn.body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)]
    assert len(calls) == 1, f"{fn.name}: parse, then call one stage function ({len(calls)} calls)"
    assert len(fn.body) <= 6, f"{fn.name}: {len(fn.body)} statements; parse and call one function"
