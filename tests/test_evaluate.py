"""Benchmark table rows, summary and plot from hand-made predictions.csv files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from slidemil.evaluate import benchmark_table, write_benchmark

CLASSES = ["normal", "tumor"]


def _predictions(path, p_tumor_test, labels_test, n_train: int = 3):
    """predictions.csv with given test rows plus train/val rows that must be ignored."""
    rows = [{"slide_id": f"t{i}", "label": lab, "role": "test", "prob_normal": 1 - p, "prob_tumor": p}
            for i, (p, lab) in enumerate(zip(p_tumor_test, labels_test))]
    # Deliberately wrong train/val predictions: they would ruin the metrics if counted.
    rows += [{"slide_id": f"r{i}", "label": "tumor", "role": "train" if i else "val",
              "prob_normal": 0.99, "prob_tumor": 0.01} for i in range(n_train)]
    df = pd.DataFrame(rows)
    df["pred"] = np.where(df["prob_tumor"] >= 0.5, "tumor", "normal")
    df.to_csv(path, index=False)
    return str(path)


@pytest.fixture
def runs(tmp_path):
    labels = ["normal", "normal", "tumor", "tumor"]
    perfect = [0.1, 0.2, 0.8, 0.9]
    three_quarters = [0.1, 0.6, 0.4, 0.8]  # AUC 0.75, balanced accuracy 0.5, F1 0.5
    out = []
    for fold, probs in enumerate([perfect, three_quarters]):
        out.append({"encoder": "resnet18", "model": "abmil", "fold": fold,
                    "predictions_csv": _predictions(tmp_path / f"a{fold}.csv", probs, labels)})
    for fold in range(2):
        out.append({"encoder": "resnet18", "model": "mean", "fold": fold,
                    "predictions_csv": _predictions(tmp_path / f"m{fold}.csv", [0.5] * 4, labels)})
    return out


def test_rows_and_summary(runs):
    table = benchmark_table(runs, CLASSES, n_boot=200)
    assert list(table.columns) == ["encoder", "model", "fold", "n_test", "auc", "balanced_accuracy", "f1",
                                   "auc_ci_lo", "auc_ci_hi", "auc_sd", "balanced_accuracy_sd", "f1_sd"]
    assert list(zip(table["model"], table["fold"])) == [("abmil", 0), ("abmil", 1), ("abmil", "summary"),
                                                        ("mean", 0), ("mean", 1), ("mean", "summary")]
    ab = table[table["model"] == "abmil"].set_index("fold")
    assert ab.loc[0, "auc"] == 1.0 and ab.loc[0, "balanced_accuracy"] == 1.0 and ab.loc[0, "f1"] == 1.0
    assert ab.loc[1, ["auc", "balanced_accuracy", "f1"]].tolist() == pytest.approx([0.75, 0.5, 0.5])
    assert (ab.loc[[0, 1], "n_test"] == 4).all() and ab.loc["summary", "n_test"] == 8
    assert ab.loc["summary", "auc"] == pytest.approx(0.875)
    assert ab.loc["summary", "auc_sd"] == pytest.approx(np.std([1.0, 0.75], ddof=1))
    assert ab.loc["summary", "f1"] == pytest.approx(0.75)
    assert ab.loc[0, "auc_ci_lo"] == 1.0 and ab.loc[0, "auc_ci_hi"] == 1.0
    assert ab.loc[1, "auc_ci_lo"] <= 0.75 <= ab.loc[1, "auc_ci_hi"]
    assert np.isnan(ab.loc[0, "auc_sd"])  # sd only on summary rows
    mean = table[(table["model"] == "mean") & (table["fold"] == "summary")].iloc[0]
    assert mean["auc"] == 0.5 and mean["auc_sd"] == 0.0


def test_write_benchmark(tmp_path, runs):
    out_csv, png = tmp_path / "out" / "benchmark.csv", tmp_path / "out" / "roc.png"
    table = write_benchmark(runs, CLASSES, out_csv, png)
    back = pd.read_csv(out_csv)
    assert len(back) == len(table) == 6
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out_csv.parent.iterdir()) == ["benchmark.csv", "roc.png"]


def test_missing_probability_column_is_a_clear_error(tmp_path, runs):
    with pytest.raises(ValueError, match="prob_stroma"):
        benchmark_table(runs, ["normal", "stroma"])


def test_multiclass(tmp_path):
    classes = ["ccrcc", "prcc", "chrcc"]
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 5)
    prob = rng.dirichlet(np.ones(3), size=15) + 2 * np.eye(3)[y]
    prob /= prob.sum(1, keepdims=True)
    df = pd.DataFrame({"slide_id": [f"s{i}" for i in range(15)], "label": np.array(classes)[y],
                       "role": "test", **{f"prob_{c}": prob[:, i] for i, c in enumerate(classes)}})
    df["pred"] = np.array(classes)[prob.argmax(1)]
    df.to_csv(tmp_path / "p.csv", index=False)
    runs = [{"encoder": "e", "model": "abmil", "fold": 0, "predictions_csv": tmp_path / "p.csv"}]
    table = write_benchmark(runs, classes, tmp_path / "b.csv", tmp_path / "roc.png")
    row = table.iloc[0]
    assert row["auc"] == 1.0 and row["balanced_accuracy"] == 1.0 and row["f1"] == 1.0
    assert table.iloc[1]["fold"] == "summary"
