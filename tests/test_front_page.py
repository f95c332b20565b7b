"""The report's front page: the slides table, then benchmark tables that read (3 decimals, CI beside
the estimate), and no section for an empty table."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from slidemil.evaluate.front_page import cohort_table, front_page_html, with_ci, write_front_page

SHEET = pd.DataFrame({"slide_id": ["a", "b", "c", "d"], "label": ["tumour", "normal", "tumour", "normal"]})
QC = pd.DataFrame({"slide_id": ["a", "b", "c", "d"], "status": ["ok", "ok", "failed", "empty"],
                   "reason": ["", "", "no mpp in the file or the sheet", "no tissue tiles"]})
FOLDS = pd.DataFrame({"slide_id": ["a", "b", "c", "a", "b", "c"], "fold": [0, 0, 0, 1, 1, 1],  # c: failed QC
                      "role": ["test", "train", "train", "train", "test", "test"]})
BENCH = pd.DataFrame({"encoder": ["enc"], "model": ["abmil"], "n_runs": [4], "n_folds": [2], "n_seeds": [2],
                      "n_test_slides": [2], "pooled_auc": [0.8123456789012345], "pooled_auc_ci_lo": [0.70123456789],
                      "pooled_auc_ci_hi": [0.905], "fold_auc_mean": [0.8], "fold_auc_sd": [0.1],
                      "balanced_accuracy": [0.75], "f1": [2 / 3], "sensitivity": [0.5], "specificity": [1.0]})
COMPARISONS = pd.DataFrame(columns=["a_encoder", "a_model", "b_encoder", "b_model", "source", "n_slides", "auc_a",
                                    "auc_b", "auc_diff", "diff_ci_lo", "diff_ci_hi", "p_value"])
CLAIMS = pd.DataFrame({"claim": ["x"], "paper": ["000"], "statement": ["s"], "comparison": ["enc/abmil vs enc/mean"],
                       "n_slides": [2.0], "auc_diff": [0.1], "diff_ci_lo": [-0.1], "diff_ci_hi": [0.3],
                       "p_value": [0.4], "verdict": ["inconclusive"], "note": [None]})


def _predictions(tmp_path: Path) -> list[str]:
    """Two folds x two seeds of enc/abmil: a is a test slide of fold 0, b of fold 1."""
    paths = []
    for fold, test in ((0, "a"), (1, "b")):
        for seed, p in ((0, 0.9), (1, 0.7)):
            run = tmp_path / "mil" / "enc" / "abmil" / f"fold{fold}" / f"seed{seed}"
            run.mkdir(parents=True)
            other = "b" if test == "a" else "a"
            pd.DataFrame({"slide_id": [test, other], "label": ["tumour", "normal"], "role": ["test", "train"],
                          "prob_normal": [1 - p, 0.5], "prob_tumour": [p, 0.5]}).to_csv(run / "predictions.csv",
                                                                                       index=False)
            paths.append(str(run / "predictions.csv"))
    return paths


def test_cohort_table_lists_failed_slides_first_with_split_and_predictions(tmp_path):
    table = cohort_table(SHEET, QC, FOLDS, _predictions(tmp_path))
    assert table["slide_id"].tolist() == ["c", "d", "a", "b"]  # failed, empty, then ok by id
    c = table.set_index("slide_id").loc["c"]
    assert (c["qc"], c["reason"], c["split"], c["enc / abmil"]) == ("failed", "no mpp in the file or the sheet",
                                                                     "left out", "")
    a = table.set_index("slide_id").loc["a"]
    assert (a["label"], a["split"], a["qc"]) == ("tumour", "test (fold 0)", "ok")
    assert a["enc / abmil"] == "tumour 0.800"  # the test prediction, mean over the two seeds


def test_front_page_formats_numbers_and_leaves_out_empty_sections(tmp_path):
    cohort = cohort_table(SHEET, QC, FOLDS, _predictions(tmp_path))
    page = front_page_html(cohort, BENCH, COMPARISONS, CLAIMS, pd.DataFrame(), show_claims=False)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)).replace("\u00a0", " ")
    assert "0.812 [0.701, 0.905]" in text and "0.667" in text
    assert not re.search(r"\d\.\d{4}", text), "a number with more than 3 decimals"
    headings = re.findall(r"<h2[^>]*>([^<]+)</h2>", page)
    assert headings == ["Slides", "Benchmark"]  # no comparisons (empty), no FROC, no claims outside a claims run
    assert page.index("no mpp in the file or the sheet") < page.index(">a<")
    assert "4 slides: 2 ok, 1 failed, 1 empty" in text
    with_claims = front_page_html(cohort, BENCH, COMPARISONS, CLAIMS, pd.DataFrame(), show_claims=True)
    assert re.findall(r"<h2[^>]*>([^<]+)</h2>", with_claims) == ["Slides", "Benchmark", "Claims"]
    assert "0.100 [-0.100, 0.300]" in with_claims.replace("\u00a0", " ")


def test_with_ci_keeps_the_estimate_where_the_ci_is_missing():
    assert with_ci(0.5, float("nan"), 0.7) == "0.500"
    assert with_ci(1.0, 1.0, 1.0).replace("\u00a0", " ") == "1 [1, 1]"


def test_write_front_page_writes_the_cohort_csv_and_the_fragment(tmp_path):
    paths = {name: tmp_path / f"{name}.csv" for name in ("bench", "comparisons", "claims", "folds")}
    BENCH.to_csv(paths["bench"], index=False)
    COMPARISONS.to_csv(paths["comparisons"], index=False)
    CLAIMS.to_csv(paths["claims"], index=False)
    FOLDS.to_csv(paths["folds"], index=False)
    QC.to_csv(tmp_path / "cohort.tsv", sep="\t", index=False)
    froc = tmp_path / "heatmaps" / "enc" / "abmil" / "froc.csv"
    froc.parent.mkdir(parents=True)
    pd.DataFrame({"n_slides": [2], "n_lesions": [0], "sens_1fp": [0.0], "froc": [0.0]}).to_csv(froc, index=False)
    write_front_page(SHEET, tmp_path / "cohort.tsv", paths["folds"], _predictions(tmp_path), paths["bench"],
                     paths["comparisons"], paths["claims"], [str(froc)], False, tmp_path / "out" / "cohort.csv",
                     tmp_path / "out" / "front_page.html")
    assert pd.read_csv(tmp_path / "out" / "cohort.csv")["slide_id"].tolist() == ["c", "d", "a", "b"]
    page = (tmp_path / "out" / "front_page.html").read_text()
    assert "FROC" not in page  # no lesion to find: no FROC section
