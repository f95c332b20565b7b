"""Benchmark tables, comparisons and the evaluate CLI from hand-made predictions.csv files."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from slidemil.cli import main
from slidemil.config import EvaluateConfig
from slidemil.evaluate.benchmark import (COMPARISON_COLUMNS, RUN_COLUMNS, SUMMARY_COLUMNS, comparison_pairs, compare,
                               evaluate_runs, parse_run_path, resolve_baselines, write_evaluation)

CLASSES = ["normal", "tumor"]
LABELS = {0: ["normal", "normal", "tumor", "tumor"], 1: ["normal", "normal", "tumor", "tumor"]}
# Validation of every run: a normal slide at 0.05 and a tumour slide at 0.25 -> Youden threshold 0.15.
VAL = [("v0", "normal", 0.05), ("v1", "tumor", 0.25)]


def _write(root, enc, model, fold, seed, probs, val=VAL, seed_dir=True):
    """predictions.csv of one run: test slides f{fold}_{i} with LABELS[fold], the given tumour
    probabilities, `val` rows, and a deliberately wrong train row that must be ignored."""
    rows = [{"slide_id": f"f{fold}_{i}", "label": lab, "role": "test", "prob_tumor": p}
            for i, (lab, p) in enumerate(zip(LABELS[fold], probs))]
    rows += [{"slide_id": sid, "label": lab, "role": "val", "prob_tumor": p} for sid, lab, p in val]
    rows += [{"slide_id": f"r{fold}", "label": "tumor", "role": "train", "prob_tumor": 0.0}]
    df = pd.DataFrame(rows)
    df["prob_normal"] = 1 - df["prob_tumor"]
    df["pred"] = np.where(df["prob_tumor"] >= 0.5, "tumor", "normal")
    d = root / "results" / "mil" / enc / model / f"fold{fold}"
    d = d / f"seed{seed}" if seed_dir else d
    d.mkdir(parents=True, exist_ok=True)
    df[["slide_id", "label", "role", "prob_normal", "prob_tumor", "pred"]].to_csv(d / "predictions.csv", index=False)
    return str(d / "predictions.csv")


# (encoder, model) -> {(fold, seed): test tumour probabilities}
PROBS = {
    ("e1", "abmil"): {(0, 0): [0.1, 0.2, 0.3, 0.4], (0, 1): [0.3, 0.2, 0.1, 0.4],
                      (1, 0): [0.1, 0.6, 0.4, 0.8], (1, 1): [0.1, 0.2, 0.8, 0.9]},
    ("e1", "mean"): {(f, s): [0.5] * 4 for f in (0, 1) for s in (0, 1)},
    ("e2", "abmil"): {(f, s): [0.1, 0.12, 0.9, 0.95] for f in (0, 1) for s in (0, 1)},
    ("e2", "mean"): {(f, s): [0.2, 0.7, 0.3, 0.8] for f in (0, 1) for s in (0, 1)},
}


@pytest.fixture
def preds(tmp_path):
    return [_write(tmp_path, enc, mod, f, s, p) for (enc, mod), runs in PROBS.items() for (f, s), p in runs.items()]


def test_parse_run_path():
    r = parse_run_path("/x/results/mil/resnet18_rand/abmil/fold3/seed2/predictions.csv")
    assert (r.encoder, r.model, r.fold, r.seed) == ("resnet18_rand", "abmil", 3, 2)
    r = parse_run_path("results/mil/enc.v2/mean/fold0/predictions.csv")  # the layout before seeds
    assert (r.encoder, r.model, r.fold, r.seed) == ("enc.v2", "mean", 0, 0)
    with pytest.raises(ValueError, match="fold"):
        parse_run_path("results/mil/enc/abmil/predictions.csv")


def test_summary_estimators(preds):
    ev = evaluate_runs([parse_run_path(p) for p in preds], CLASSES, n_boot=200)
    assert list(ev.summary.columns) == SUMMARY_COLUMNS and list(ev.per_run.columns) == RUN_COLUMNS
    s = ev.summary.set_index(["encoder", "model"]).loc[("e1", "abmil")]
    assert (s["n_runs"], s["n_folds"], s["n_seeds"], s["n_test_slides"]) == (4, 2, 2, 8)
    # pooled_auc: per seed one AUC over both folds' test slides, then the mean over seeds.
    y = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    runs = PROBS[("e1", "abmil")]
    per_seed = [roc_auc_score(y, np.concatenate([runs[(0, s)], runs[(1, s)]])) for s in (0, 1)]
    assert s["pooled_auc"] == pytest.approx(np.mean(per_seed))
    ensemble = np.concatenate([np.mean([runs[(f, 0)], runs[(f, 1)]], axis=0) for f in (0, 1)])
    assert roc_auc_score(y, ensemble) != pytest.approx(np.mean(per_seed))  # the test can tell them apart
    assert s["pooled_auc_ci_lo"] <= s["pooled_auc"] <= s["pooled_auc_ci_hi"]
    # fold_auc_*: over the 4 runs, AUCs 1, 0.5, 0.75, 1.
    assert s["fold_auc_mean"] == pytest.approx(np.mean([1, 0.5, 0.75, 1]))
    assert s["fold_auc_sd"] == pytest.approx(np.std([1, 0.5, 0.75, 1], ddof=1))
    flat = ev.summary.set_index(["encoder", "model"]).loc[("e1", "mean")]
    assert flat["pooled_auc"] == 0.5 and flat["fold_auc_sd"] == 0.0


def test_threshold_comes_from_validation_slides(preds):
    ev = evaluate_runs([parse_run_path(p) for p in preds], CLASSES, n_boot=0)
    r = ev.per_run.set_index(["encoder", "model", "fold", "seed"]).loc[("e1", "abmil", 0, 0)]
    assert r["threshold"] == pytest.approx(0.15) and r["threshold_source"] == "youden"
    # test [0.1, 0.2, 0.3, 0.4] at 0.15 -> [0, 1, 1, 1]; at 0.5 all would be negative.
    assert (r["sensitivity"], r["specificity"], r["balanced_accuracy"]) == pytest.approx((1.0, 0.5, 0.75))
    assert r["n_val"] == 2 and r["n_test"] == 4 and r["auc"] == 1.0
    # Summary: confusion pooled over folds x seeds. e2/abmil: every test slide right at 0.15.
    s = ev.summary.set_index(["encoder", "model"])
    assert s.loc[("e2", "abmil"), ["balanced_accuracy", "f1", "sensitivity", "specificity"]].tolist() == [1, 1, 1, 1]
    # e2/mean: [0.2, 0.7, 0.3, 0.8] -> all positive at 0.15: sensitivity 1, specificity 0.
    assert s.loc[("e2", "mean"), ["sensitivity", "specificity"]].tolist() == [1.0, 0.0]


def test_validation_without_both_classes_falls_back_to_half(tmp_path, caplog):
    p = _write(tmp_path, "e", "abmil", 0, 0, [0.1, 0.6, 0.4, 0.8], val=[("v0", "normal", 0.1)])
    ev = evaluate_runs([parse_run_path(p)], CLASSES, n_boot=0)
    r = ev.per_run.iloc[0]
    assert r["threshold"] == 0.5 and r["threshold_source"] == "default"
    assert (r["sensitivity"], r["specificity"]) == pytest.approx((0.5, 0.5))
    assert "0.5 used" in caplog.text


def test_slide_tested_in_two_folds_of_a_seed_is_an_error(tmp_path):
    LABELS[2] = LABELS[0]
    try:
        a = _write(tmp_path, "e", "abmil", 0, 0, [0.1, 0.2, 0.3, 0.4])
        b = _write(tmp_path, "e", "abmil", 1, 0, [0.1, 0.2, 0.3, 0.4])
        df = pd.read_csv(b)
        df["slide_id"] = df["slide_id"].str.replace("f1_", "f0_")
        df.to_csv(b, index=False)
        with pytest.raises(ValueError, match="f0_0 is a test slide in two folds of seed 0"):
            evaluate_runs([parse_run_path(a), parse_run_path(b)], CLASSES, n_boot=0)
    finally:
        del LABELS[2]


def test_missing_probability_column_is_a_clear_error(preds):
    with pytest.raises(ValueError, match="prob_stroma"):
        evaluate_runs([parse_run_path(preds[0])], ["normal", "stroma"])


def test_default_and_configured_pairs():
    methods = [("e1", "abmil"), ("e1", "mean"), ("e2", "abmil"), ("e2", "mean"), ("e3", "mean")]
    pairs = comparison_pairs(methods, "e1", "abmil", [{"a": "e3/mean", "b": "e2/mean"},
                                                      {"a": "e2/abmil", "b": "e1/abmil"}])
    assert [(a, b, s) for a, b, s in pairs] == [
        (("e2", "abmil"), ("e1", "abmil"), "encoder"), (("e2", "mean"), ("e1", "mean"), "encoder"),
        (("e3", "mean"), ("e1", "mean"), "encoder"),
        (("e1", "mean"), ("e1", "abmil"), "model"), (("e2", "mean"), ("e2", "abmil"), "model"),
        (("e3", "mean"), ("e2", "mean"), "config")]  # e3 has no abmil; the repeated pair once
    with pytest.raises(ValueError, match="e9/abmil has no predictions"):
        comparison_pairs(methods, "e1", "abmil", [{"a": "e9/abmil", "b": "e1/abmil"}])
    assert resolve_baselines(methods, EvaluateConfig(), ["e2", "e1"]) == ("e2", "abmil")  # config order
    assert resolve_baselines(methods, EvaluateConfig(baseline_model="max"), []) == ("e1", None)
    with pytest.raises(ValueError, match="baseline_encoder 'e7'"):
        resolve_baselines(methods, EvaluateConfig(baseline_encoder="e7"), [])


def test_paired_comparison_known_case(preds):
    ev = evaluate_runs([parse_run_path(p) for p in preds], CLASSES, n_boot=200)
    row = compare(ev, ("e2", "abmil"), ("e1", "mean"), n_boot=500)
    # A separates perfectly in every resample, B is constant: the difference is 0.5 every time.
    assert row["n_slides"] == 8 and row["auc_diff"] == 0.5
    assert (row["diff_ci_lo"], row["diff_ci_hi"]) == (0.5, 0.5)
    assert row["p_value"] == pytest.approx(2 / 501) and row["p_delong"] == 0.0
    same = compare(ev, ("e1", "mean"), ("e1", "mean"))
    assert same["auc_diff"] == 0 and same["p_value"] == 1.0 and same["p_delong"] == 1.0


def test_comparison_uses_common_slides_only(tmp_path):
    a = [_write(tmp_path, "a", "abmil", f, 0, [0.1, 0.2, 0.8, 0.9]) for f in (0, 1)]
    b = [_write(tmp_path, "b", "abmil", 0, 0, [0.9, 0.8, 0.2, 0.1])]  # fold 1 missing for b
    ev = evaluate_runs([parse_run_path(p) for p in a + b], CLASSES, n_boot=0)
    row = compare(ev, ("a", "abmil"), ("b", "abmil"), n_boot=100)
    assert row["n_slides"] == 4 and row["auc_a"] == 1.0 and row["auc_b"] == 0.0 and row["auc_diff"] == 1.0


def test_write_evaluation_and_cli(tmp_path, preds):
    out = tmp_path / "out"
    rc = main(["evaluate", "--predictions", *preds, "--classes", '["normal", "tumor"]',
               "--params", '{"baseline_model": "abmil", "compare": [{"a": "e2/mean", "b": "e1/abmil"}]}',
               "--encoders", '[{"name": "e1", "arch": "resnet18"}, {"name": "e2", "arch": "resnet18"}]',
               "--bootstrap", "100", "--out", str(out / "benchmark.csv"), "--plot", str(out / "roc.png"),
               "--comparisons", str(out / "comparisons.csv"), "--claims", str(out / "claims.csv")])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["benchmark.csv", "benchmark_runs.csv", "claims.csv",
                                                     "comparisons.csv", "roc.png"]  # no temp files left
    bench = pd.read_csv(out / "benchmark.csv")
    assert list(bench.columns) == SUMMARY_COLUMNS and len(bench) == 4
    assert len(pd.read_csv(out / "benchmark_runs.csv")) == 16
    comp = pd.read_csv(out / "comparisons.csv")
    assert list(comp.columns) == COMPARISON_COLUMNS
    assert comp["source"].tolist() == ["encoder", "encoder", "model", "model", "config"]
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    claims = pd.read_csv(out / "claims.csv").set_index("claim")
    floor = claims.loc["floor_abmil_beats_mean"]
    assert floor["comparison"] == "e1/abmil vs e1/mean" and floor["verdict"] in ("holds", "inconclusive")
    assert (claims.drop("floor_abmil_beats_mean")["verdict"] == "not run").all()


def test_multiclass_does_not_crash(tmp_path):
    classes = ["ccrcc", "prcc", "chrcc"]
    rng = np.random.default_rng(0)
    paths = []
    for model, strength in (("abmil", 2.0), ("mean", 0.2)):
        y = np.repeat(np.arange(3), 6)
        prob = rng.dirichlet(np.ones(3), size=18) + strength * np.eye(3)[y]
        prob /= prob.sum(1, keepdims=True)
        role = np.where(np.arange(18) % 6 < 4, "test", "val")
        df = pd.DataFrame({"slide_id": [f"s{i}" for i in range(18)], "label": np.array(classes)[y], "role": role,
                           **{f"prob_{c}": prob[:, i] for i, c in enumerate(classes)}})
        df["pred"] = np.array(classes)[prob.argmax(1)]
        d = tmp_path / "mil" / "e" / model / "fold0" / "seed0"
        d.mkdir(parents=True)
        df.to_csv(d / "predictions.csv", index=False)
        paths.append(parse_run_path(d / "predictions.csv"))
    out = {k: tmp_path / v for k, v in (("table", "b.csv"), ("runs", "r.csv"), ("plot", "roc.png"),
                                        ("comparisons", "c.csv"), ("claims", "cl.csv"))}
    ev = write_evaluation(paths, classes, out, n_boot=50)
    s = ev.summary.set_index("model")
    assert s.loc["abmil", "pooled_auc"] == 1.0 and s.loc["abmil", "balanced_accuracy"] == 1.0
    assert math.isnan(s.loc["abmil", "sensitivity"])
    assert set(ev.per_run["threshold_source"]) == {"argmax"}
    comp = pd.read_csv(out["comparisons"]).iloc[0]
    assert (comp["a_model"], comp["b_model"]) == ("mean", "abmil") and comp["auc_diff"] < 0
    assert math.isnan(comp["p_delong"]) and 0 < comp["p_value"] <= 1


def test_seed_counts_may_differ_and_incomplete_slides_are_left_out(tmp_path, caplog):
    a = [_write(tmp_path, "a", "abmil", f, s, [0.1, 0.2, 0.8, 0.9]) for f in (0, 1) for s in (0, 1, 2)]
    b = [_write(tmp_path, "b", "abmil", f, 0, [0.3, 0.2, 0.1, 0.4]) for f in (0, 1)]
    lost = tmp_path / "results/mil/a/abmil/fold1/seed2/predictions.csv"
    df = pd.read_csv(lost)
    df[df["slide_id"] != "f1_3"].to_csv(lost, index=False)  # seed 2 lost one test slide
    ev = evaluate_runs([parse_run_path(p) for p in a + b], CLASSES, n_boot=0)
    s = ev.summary.set_index("encoder")
    assert s.loc["a", "n_seeds"] == 3 and s.loc["a", "n_test_slides"] == 7 and s.loc["b", "n_seeds"] == 1
    assert "1 test slides lack a prediction for some seed" in caplog.text
    assert ev.probs[("a", "abmil")].shape == (3, 7, 2)
    row = compare(ev, ("a", "abmil"), ("b", "abmil"), n_boot=100)
    assert (row["n_slides"], row["n_seeds_a"], row["n_seeds_b"]) == (7, 3, 1)
    assert row["auc_a"] == 1.0 and row["auc_diff"] > 0
