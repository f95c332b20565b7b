import pandas as pd
import pytest

from slidemil.cohorts.sheet import (DEMO_SLIDES, SampleSheetError, annotation_table, check_sheet, read_annotation_table,
                                    read_sheet, slide_paths, write_annotation_table)

CLASSES = ["normal", "tumour"]


def _sheet(tmp_path, rows, header="slide_id\tpath\tlabel\tpatient_id"):
    for name in ("a.svs", "b.svs", "c.svs"):
        (tmp_path / name).write_bytes(b"x")
    p = tmp_path / "samples.tsv"
    p.write_text(header + "\n" + "\n".join(rows) + "\n")
    return p


def _load(path, will_exist=()):
    """As workflow/rules/common.smk loads the sheet: read, then check."""
    df = read_sheet(path)
    check_sheet(df, CLASSES, path, will_exist)
    return df


def test_good_sheet_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    df = _load(_sheet(tmp_path, ["s1\ta.svs\tnormal\tP1", "s2\tb.svs\ttumour\tP2"]))
    assert list(df["slide_id"]) == ["s1", "s2"]


@pytest.mark.parametrize("rows,header,match", [
    (["s1\tmissing.svs\tnormal\tP1"], None, r"line 2 \(s1\): slide file missing.svs not found"),
    (["s1\ta.svs\tnormal\tP1", "s1\tb.svs\ttumour\tP2"], None, r"lines 2, 3: duplicate slide_id 's1'"),
    (["s1\ta.svs\tcancer\tP1"], None, r"line 2 \(s1\): unknown label 'cancer'"),
    (["s1\ta.svs\tnormal\tP1\ttrain", "s2\tb.svs\tnormal\tP1\ttest"], "slide_id\tpath\tlabel\tpatient_id\tsplit",
     r"lines 2, 3: patient 'P1' is in splits \['test', 'train'\]"),
    (["s1\ta.svs\tnormal\tP1\t-1"], "slide_id\tpath\tlabel\tpatient_id\tmpp", r"line 2 \(s1\): mpp must be a positive"),
    (["s1\ta.svs\tnormal"], "slide_id\tpath\tlabel", r"missing column\(s\) patient_id"),
])
def test_each_problem_is_one_line_naming_the_row(tmp_path, monkeypatch, rows, header, match):
    monkeypatch.chdir(tmp_path)
    kwargs = {"header": header} if header else {}
    with pytest.raises(SampleSheetError, match=match):
        _load(_sheet(tmp_path, rows, **kwargs))


def test_generated_demo_paths_need_not_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _sheet(tmp_path, ["d1\tresults/demo/slides/d1.tiff\tnormal\tP1"])
    assert len(_load(p, will_exist={"results/demo/slides/d1.tiff"})) == 1


def test_slide_paths_follow_the_sheet(tmp_path):
    sheet = tmp_path / "s.tsv"
    sheet.write_text("slide_id\tpath\tlabel\tpatient_id\nb\tx\tnormal\tp1\na\ty\ttumour\tp2\n")
    assert slide_paths(tmp_path / "tiles", sheet, ".zarr") == [str(tmp_path / "tiles/b.zarr"),
                                                               str(tmp_path / "tiles/a.zarr")]


def test_annotation_table_takes_the_sheet_column_then_the_demo_outlines(tmp_path):
    sheet = pd.DataFrame({"slide_id": ["d0", "d1", "own", "plain"],
                          "path": [DEMO_SLIDES.format(slide="d0"), DEMO_SLIDES.format(slide="d1"), "a.svs", "b.svs"],
                          "annotation": [None, "mine.xml", "own.geojson", None]})
    table = annotation_table(sheet, demo=True)
    assert table["tumour"] == {"d0": "results/demo/annotations/d0.geojson", "d1": "mine.xml", "own": "own.geojson"}
    assert table["mimic"] == {"d0": "results/demo/annotations/d0.mimic.geojson",
                              "d1": "results/demo/annotations/d1.mimic.geojson"}
    assert annotation_table(sheet, demo=False) == {"tumour": {"d1": "mine.xml", "own": "own.geojson"}, "mimic": {}}
    sheet.assign(label="normal", patient_id="p").to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    write_annotation_table(tmp_path / "s.tsv", True, tmp_path / "annotations.json")
    assert read_annotation_table(tmp_path / "annotations.json") == table
    assert read_annotation_table(None) == {"tumour": {}, "mimic": {}}
