"""Failures you cannot miss: every run ends with the cohort's summary, and too many failed slides stop it.

A run with 2 of 8 slides failed (or 5 of 8 without mpp) ended with "25 of 25 steps done" and exit 0.
"""

from __future__ import annotations

import io
import logging
import re

import pandas as pd
import pytest

from slidemil.cli import main
from slidemil.slides.summary import print_run_summary, summary_lines, too_many_failed


def _table(n: int = 8, failed: int = 2, empty: int = 0) -> pd.DataFrame:
    status = ["failed"] * failed + ["empty"] * empty + ["ok"] * (n - failed - empty)
    reason = [f"t{i}.svs: not a slide format" if s == "failed" else "no tissue found" if s == "empty" else ""
              for i, s in enumerate(status)]
    flags = ["" if s != "ok" else "mpp_from_sheet" if i == n - 1 else "" for i, s in enumerate(status)]
    return pd.DataFrame({"slide_id": [f"t{i}" for i in range(n)], "status": status, "reason": reason,
                         "n_tiles": [0 if s != "ok" else 100 for s in status], "flags": flags})


def test_summary_counts_reasons_flags_and_the_table():
    lines = summary_lines(_table(failed=2, empty=1), "results/qc/cohort.tsv", 0.2)
    assert lines[0].startswith("slidemil: 8 slides: 5 ok, 1 empty, 2 failed (25% failed, more than "
                               "max_failed_fraction 0.2: the run stops")
    assert lines[1:4] == ["  failed t0: t0.svs: not a slide format", "  failed t1: t1.svs: not a slide format",
                          "  empty t2: no tissue found"]
    assert lines[-2:] == ["  flagged: mpp_from_sheet 1", "  QC table: results/qc/cohort.tsv"]
    many = summary_lines(_table(n=40, failed=9), "q.tsv", 0.5)
    assert many[0] == "slidemil: 40 slides: 31 ok, 0 empty, 9 failed" and "  ... and 4 more" in many


def test_the_ceiling_applies_with_skip_only():
    assert too_many_failed(_table(failed=2), 0.2) and not too_many_failed(_table(failed=1), 0.2)
    assert not too_many_failed(_table(failed=2), 0.25)  # at the ceiling is not above it
    assert not too_many_failed(_table(failed=5), 0.2, on_error="fail")  # 'fail' stopped at the first


def _qc_inputs(tmp_path, failed: int):
    """8 slides' mask sidecars and tile stores as the tile job leaves them, `failed` of them flagged failed."""
    from slidemil.slides.failures import write_failed_mask, write_failed_store
    from slidemil.slides.store import create_tile_arrays, write_index_arrays

    import numpy as np
    import zarr

    ids = [f"t{i}" for i in range(8)]
    pd.DataFrame({"slide_id": ids, "path": "x", "label": "normal", "patient_id": ids}).to_csv(
        tmp_path / "samples.tsv", sep="\t", index=False)
    (tmp_path / "masks").mkdir()
    for i, sid in enumerate(ids):
        if i < failed:
            reason = f"{sid}.svs: not a slide format (a text file?); remove it from samples.tsv"
            write_failed_mask(tmp_path / "masks" / f"{sid}.png", tmp_path / f"{sid}.qc.png", sid, reason)
            write_failed_store(tmp_path / "tiles" / f"{sid}.zarr", sid, reason, 32)
            continue
        (tmp_path / "masks" / f"{sid}.json").write_text('{"tissue_fraction": 0.3, "mpp_source": "metadata"}')
        g = zarr.open_group(str(tmp_path / "tiles" / f"{sid}.zarr"), mode="w", zarr_format=3)
        create_tile_arrays(g, 1, 32)
        write_index_arrays(g, np.zeros((1, 2), np.int32), np.zeros((1, 2), np.int32))
        g.attrs.update({"slide_id": sid, "n_tiles": 1, "status": "ok"})


def _qc(tmp_path, *extra: str) -> int:
    return main(["qc", "--tiles-dir", str(tmp_path / "tiles"), "--masks-dir", str(tmp_path / "masks"),
                 "--samples", str(tmp_path / "samples.tsv"), "--out", str(tmp_path / "cohort.tsv"), *extra])


def test_the_qc_job_stops_the_run_above_max_failed_fraction_with_the_summary(tmp_path, caplog):
    _qc_inputs(tmp_path, failed=2)
    with caplog.at_level(logging.ERROR):
        assert _qc(tmp_path, "--on-slide-error", "skip", "--max-failed-fraction", "0.2") == 1
    err = caplog.text
    assert "slidemil: 8 slides: 6 ok, 0 empty, 2 failed (25% failed, more than max_failed_fraction 0.2" in err
    assert "failed t0: t0.svs: not a slide format" in err and "failed t1:" in err
    assert _qc(tmp_path, "--on-slide-error", "skip", "--max-failed-fraction", "0.25") == 0


def test_the_end_of_run_summary_reads_the_table_or_the_per_slide_outputs(tmp_path, monkeypatch):
    _qc_inputs(tmp_path, failed=2)
    monkeypatch.chdir(tmp_path)  # the per-slide outputs' default folders: results/tiles, results/masks
    (tmp_path / "results").mkdir()
    (tmp_path / "tiles").rename(tmp_path / "results" / "tiles")
    (tmp_path / "masks").rename(tmp_path / "results" / "masks")
    out = io.StringIO()
    print_run_summary("samples.tsv", "results/qc/cohort.tsv", 0.2, stream=out)  # the gate removed the table
    text = out.getvalue()
    assert "8 slides: 6 ok, 0 empty, 2 failed (25% failed" in text and "failed t1: t1.svs" in text
    assert "QC table: not written" in text
    assert main(["qc", "--tiles-dir", "results/tiles", "--masks-dir", "results/masks", "--samples", "samples.tsv",
                 "--out", "results/qc/cohort.tsv"]) == 0
    out = io.StringIO()
    print_run_summary("samples.tsv", "results/qc/cohort.tsv", 0.5, stream=out)
    assert out.getvalue().splitlines()[0] == "slidemil: 8 slides: 6 ok, 0 empty, 2 failed"
    assert out.getvalue().splitlines()[-1] == "  QC table: results/qc/cohort.tsv"
    out = io.StringIO()
    print_run_summary("missing.tsv", "results/qc/none.tsv", stream=out)  # nothing to say: nothing printed
    assert out.getvalue() == ""


def _bad_sheet(workdir, bad: int) -> None:
    """The tiny config's sheet with the paths of its first `bad` slides pointing at text files named .svs."""
    sheet = pd.read_csv(workdir / "samples.tsv", sep="\t")
    for i in range(bad):
        path = workdir / f"broken{i}.svs"
        path.write_text("slide_id\tpath\nthis is not a slide\n")
        sheet.loc[i, "path"] = str(path)
    sheet.to_csv(workdir / "samples.tsv", sep="\t", index=False)


@pytest.mark.e2e
@pytest.mark.parametrize("bad, rc", [(2, 1), (1, 0)])  # 25% of 8 is above max_failed_fraction 0.2, 12.5% is not
def test_a_run_ends_with_the_summary_and_fails_above_the_ceiling(tmp_path, bad, rc):
    from test_workflow import _tiny_config, snakemake

    _tiny_config(tmp_path)
    _bad_sheet(tmp_path, bad)
    proc = snakemake(tmp_path, "results/qc/cohort.tsv", check=False)
    said = proc.stdout + proc.stderr
    assert proc.returncode == rc, said[-3000:]
    ok = 8 - bad
    assert f"slidemil: 8 slides: {ok} ok, 0 empty, {bad} failed" in said, said[-3000:]
    assert re.search(r"failed t0: .*broken0\.svs.*not a slide", said)
    if rc:
        assert "more than max_failed_fraction 0.2" in said and "QC table: not written" in said
        assert "Error in rule qc_cohort" in said
    else:
        assert "QC table: results/qc/cohort.tsv" in said
