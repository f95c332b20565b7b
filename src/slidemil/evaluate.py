"""Benchmark table and ROC plot from the per-fold MIL predictions.

Metrics are computed on the test slides of each fold only (role == "test" in predictions.csv),
one row per (encoder, MIL model, fold), plus a summary row per (encoder, model): mean and sd of
the fold metrics, and the bootstrap AUC CI of the pooled test predictions (with k-fold every
slide is tested exactly once, so pooling is the out-of-fold estimate the ROC plot shows).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slidemil.metrics import auc, binary_metrics, bootstrap_ci

log = logging.getLogger(__name__)

METRICS = ["auc", "balanced_accuracy", "f1"]
COLUMNS = (["encoder", "model", "fold", "n_test", *METRICS, "auc_ci_lo", "auc_ci_hi"]
           + [f"{m}_sd" for m in METRICS])
SUMMARY = "summary"


def load_test_predictions(predictions_csv: str | Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Test slides of one fold: (y_true int [N], prob [N, C]) from a predictions.csv."""
    df = pd.read_csv(predictions_csv, dtype={"slide_id": str, "label": str, "role": str})
    cols = [f"prob_{c}" for c in classes]
    missing = [c for c in ["label", "role", *cols] if c not in df.columns]
    if missing:
        raise ValueError(f"{predictions_csv}: missing columns {missing}")
    df = df[df["role"] == "test"]
    unknown = sorted(set(df["label"]) - set(classes))
    if unknown:
        raise ValueError(f"{predictions_csv}: labels {unknown} are not among the classes {classes}")
    y = df["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=int)
    return y, df[cols].to_numpy(dtype=np.float64)


def _scores(prob: np.ndarray) -> np.ndarray:
    """[N, 2] -> [N] positive-class probability (binary metrics); [N, C>2] kept."""
    return prob[:, 1] if prob.shape[1] == 2 else prob


def benchmark_table(runs: list[dict[str, Any]], classes: list[str], n_boot: int = 1000,
                    seed: int = 0) -> pd.DataFrame:
    """One row per (encoder, model, fold) on test slides, plus one 'summary' row per (encoder, model).

    runs: dicts with keys encoder, model, fold, predictions_csv. Columns: encoder, model, fold,
    n_test, auc, balanced_accuracy, f1, auc_ci_lo, auc_ci_hi (bootstrap 95%, n_boot resamples),
    and auc_sd, balanced_accuracy_sd, f1_sd (summary rows only: sd over folds, ddof=1).
    """
    rows, pooled = [], {}
    for run in runs:
        y, prob = load_test_predictions(run["predictions_csv"], classes)
        key = (str(run["encoder"]), str(run["model"]))
        if len(y) == 0:
            log.warning("%s/%s fold %s: no test slides in %s", *key, run["fold"], run["predictions_csv"])
        p = _scores(prob)
        lo, hi = bootstrap_ci(y, p, "auc", n=n_boot, seed=seed)
        rows.append({"encoder": key[0], "model": key[1], "fold": int(run["fold"]), "n_test": len(y),
                     **binary_metrics(y, p), "auc_ci_lo": lo, "auc_ci_hi": hi})
        pooled.setdefault(key, []).append((y, prob))
    folds = pd.DataFrame(rows, columns=COLUMNS[:9])
    if folds.empty:
        return pd.DataFrame(columns=COLUMNS)
    if folds.duplicated(["encoder", "model", "fold"]).any():
        raise ValueError("runs list the same (encoder, model, fold) twice")

    out = []
    for (enc, mod), g in folds.groupby(["encoder", "model"], sort=True):
        g = g.sort_values("fold")
        y = np.concatenate([a for a, _ in pooled[(enc, mod)]])
        prob = np.concatenate([b for _, b in pooled[(enc, mod)]])
        lo, hi = bootstrap_ci(y, _scores(prob), "auc", n=n_boot, seed=seed)
        summary = {"encoder": enc, "model": mod, "fold": SUMMARY, "n_test": int(g["n_test"].sum()),
                   "auc_ci_lo": lo, "auc_ci_hi": hi}
        for m in METRICS:
            vals = g[m].to_numpy(dtype=float)
            finite = vals[np.isfinite(vals)]
            summary[m] = float(finite.mean()) if finite.size else float("nan")
            summary[f"{m}_sd"] = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
        out.append(g.astype({"fold": object}))
        out.append(pd.DataFrame([summary]))
    table = pd.concat(out, ignore_index=True)
    return table.reindex(columns=COLUMNS)


def _roc_points(y: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC (fpr, tpr); for C > 2 the micro-average over one-vs-rest indicator columns."""
    from sklearn.metrics import roc_curve

    if prob.shape[1] == 2:
        fpr, tpr, _ = roc_curve(y, prob[:, 1])
    else:
        onehot = np.eye(prob.shape[1], dtype=int)[y]
        fpr, tpr, _ = roc_curve(onehot.ravel(), prob.ravel())
    return fpr, tpr


def _atomic_path(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def write_benchmark(runs: list[dict[str, Any]], classes: list[str], out_csv: str | Path,
                    plot_png: str | Path, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Write benchmark_table(runs) to out_csv and a pooled-test ROC plot to plot_png (atomically)."""
    import matplotlib

    matplotlib.use("Agg")  # headless cluster nodes
    import matplotlib.pyplot as plt

    table = benchmark_table(runs, classes, n_boot=n_boot, seed=seed)
    out_csv, plot_png = Path(out_csv), Path(plot_png)
    tmp = _atomic_path(out_csv)
    table.to_csv(tmp, index=False)
    os.replace(tmp, out_csv)

    pooled: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
    for run in runs:
        pooled.setdefault((str(run["encoder"]), str(run["model"])), []).append(
            load_test_predictions(run["predictions_csv"], classes))
    auc_name = "macro AUC" if len(classes) > 2 else "AUC"
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for (enc, mod), parts in sorted(pooled.items()):
        y = np.concatenate([a for a, _ in parts])
        prob = np.concatenate([b for _, b in parts])
        if len(np.unique(y)) < 2:
            log.warning("%s/%s: test slides of one class only, no ROC curve", enc, mod)
            continue
        fpr, tpr = _roc_points(y, prob)
        ax.plot(fpr, tpr, lw=1.5, label=f"{enc} / {mod} ({auc_name} {auc(y, _scores(prob)):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    title = "ROC, test slides pooled over folds" + (" (micro-average)" if len(classes) > 2 else "")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title,
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    tmp = _atomic_path(plot_png)
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    os.replace(tmp, plot_png)
    return table
