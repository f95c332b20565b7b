"""Benchmark tables, paired comparisons and the ROC plot from the MIL runs' predictions.

A run is one (encoder, model, fold, seed): results/mil/{encoder}/{model}/fold{k}/seed{s}/
predictions.csv (columns slide_id, label, role, prob_<class>..., pred). Folds come from one fold
table, independent of the MIL seed, so a slide is a test slide in the same fold for every seed.
Test labels are read here and nowhere else; validation slides serve the threshold only.

Estimators, with the column names that carry them:

* `pooled_auc` (benchmark.csv): per seed, one AUC over the test slides of all folds (the
  out-of-fold estimate; with k-fold every slide is tested once), then the mean over seeds: what
  one training run of the method achieves. Not the AUC of seed-averaged probabilities, which
  would score a seed ensemble and flatter methods whose seeds disagree. `pooled_auc_ci_lo/hi`:
  stratified percentile bootstrap 95% CI over slides (positives and negatives resampled
  separately, the same slides for every seed; slidemil.evaluate.stats). Comparisons and claims use the
  same estimator, so a benchmark row and a comparison row about one method agree.
* `fold_auc_mean`, `fold_auc_sd` (benchmark.csv): mean and sd (ddof 1) of the per-run test AUC
  over folds x seeds (runs whose test part has one class only are left out): the spread a
  single (fold, seed) run shows.
* `balanced_accuracy`, `f1`, `sensitivity`, `specificity`: each run classifies its test slides at
  a threshold chosen on that run's validation slides only (Youden's J, slidemil.evaluate.stats;
  0.5 when validation has one class or no evidence); the confusion counts are pooled over folds
  x seeds. C > 2 classes: argmax, macro F1, sensitivity/specificity nan. Per-run values in
  benchmark_runs.csv.
* comparisons.csv: AUC(A) - AUC(B) (pooled_auc as above) on the test slides that both A and B
  predicted, with a paired stratified bootstrap 95% CI and two-sided p-value (`p_value`), and
  DeLong's p-value (`p_delong`, binary tasks) beside it.

Multiclass tasks (C > 2) use one-vs-rest macro AUC throughout.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from slidemil.config import EvaluateConfig, from_block
from slidemil.files import atomic_path
from slidemil.evaluate.metrics import binary_metrics, label_metrics, predict
from slidemil.evaluate.stats import auc_ci, delong_test, paired_auc_bootstrap, seed_mean_auc, youden_threshold

log = logging.getLogger(__name__)

RUN_COLUMNS = ["encoder", "model", "fold", "seed", "n_val", "n_test", "auc", "threshold",
               "threshold_source", "balanced_accuracy", "f1", "sensitivity", "specificity"]
SUMMARY_COLUMNS = ["encoder", "model", "n_runs", "n_folds", "n_seeds", "n_test_slides", "pooled_auc",
                   "pooled_auc_ci_lo", "pooled_auc_ci_hi", "fold_auc_mean", "fold_auc_sd",
                   "balanced_accuracy", "f1", "sensitivity", "specificity"]
COMPARISON_COLUMNS = ["a_encoder", "a_model", "b_encoder", "b_model", "source", "n_slides", "n_seeds_a",
                      "n_seeds_b", "auc_a", "auc_b", "auc_diff", "diff_ci_lo", "diff_ci_hi", "p_value",
                      "p_delong"]
Method = tuple[str, str]  # (encoder, model)

_RUN_PATH = re.compile(r"(?:^|/)(?P<encoder>[^/]+)/(?P<model>[^/]+)/fold(?P<fold>\d+)"
                       r"(?:/seed(?P<seed>\d+))?/predictions\.csv$")


@dataclass(frozen=True)
class Run:
    """One MIL run's predictions file and what it is."""

    encoder: str
    model: str
    fold: int
    seed: int
    predictions_csv: str

    @property
    def method(self) -> Method:
        return self.encoder, self.model


def parse_run_path(path: str | Path) -> Run:
    """Run from .../{encoder}/{model}/fold{k}/seed{s}/predictions.csv (no seed{s} part: seed 0)."""
    m = _RUN_PATH.search(Path(path).as_posix())
    if not m:
        raise ValueError(f"{path}: expected .../{{encoder}}/{{model}}/fold{{k}}/seed{{s}}/predictions.csv")
    return Run(m["encoder"], m["model"], int(m["fold"]), int(m["seed"] or 0), str(path))


def _as_run(run: Run | dict[str, Any]) -> Run:
    if isinstance(run, Run):
        return run
    return Run(str(run["encoder"]), str(run["model"]), int(run["fold"]), int(run.get("seed", 0)),
               str(run["predictions_csv"]))


def load_predictions(predictions_csv: str | Path, classes: Sequence[str]) -> pd.DataFrame:
    """predictions.csv -> columns slide_id, role, y (int class index), prob_<class> per class."""
    df = pd.read_csv(predictions_csv, dtype={"slide_id": str, "label": str, "role": str})
    cols = [f"prob_{c}" for c in classes]
    missing = [c for c in ["slide_id", "label", "role", *cols] if c not in df.columns]
    if missing:
        raise ValueError(f"{predictions_csv}: missing columns {missing}")
    unknown = sorted(set(df["label"]) - set(classes))
    if unknown:
        raise ValueError(f"{predictions_csv}: labels {unknown} are not among the classes {list(classes)}")
    if df["slide_id"].duplicated().any():
        raise ValueError(f"{predictions_csv}: slide {df['slide_id'][df['slide_id'].duplicated()].iloc[0]} twice")
    df["y"] = df["label"].map({c: i for i, c in enumerate(classes)}).astype(int)
    return df[["slide_id", "role", "y", *cols]]


def _scores(prob: np.ndarray) -> np.ndarray:
    """[N, 2] -> [N] positive-class probability; [N, C>2] kept."""
    return prob[:, 1] if prob.shape[1] == 2 else prob


def run_row(run: Run, df: pd.DataFrame, classes: Sequence[str]) -> tuple[dict[str, Any], np.ndarray]:
    """Test metrics of one run at a threshold chosen on its validation slides.

    Returns the benchmark_runs.csv row and the run's hard test predictions int [n_test].
    """
    cols = [f"prob_{c}" for c in classes]
    val, test = df[df["role"] == "val"], df[df["role"] == "test"]
    y_test, s_test = test["y"].to_numpy(), _scores(test[cols].to_numpy(dtype=np.float64))
    if len(classes) == 2:
        threshold, source = youden_threshold(val["y"].to_numpy(), _scores(val[cols].to_numpy(dtype=np.float64)))
        if source != "youden":
            log.warning("%s: validation slides cannot choose a threshold (one class, none, or no "
                        "separation): 0.5 used", run.predictions_csv)
    else:
        threshold, source = float("nan"), "argmax"
    pred = predict(s_test, 0.5 if np.isnan(threshold) else threshold)
    row = {"encoder": run.encoder, "model": run.model, "fold": run.fold, "seed": run.seed,
           "n_val": len(val), "n_test": len(test), "threshold": threshold, "threshold_source": source,
           **binary_metrics(y_test, s_test, 0.5 if np.isnan(threshold) else threshold)}
    return row, pred


@dataclass
class Evaluation:
    """Everything evaluate computes once and the tables, plot and claims read.

    per_run: benchmark_runs.csv rows. summary: benchmark.csv rows. slides: (encoder, model) ->
    DataFrame indexed by slide_id (sorted) with y and fold, the test slides of every seed;
    probs: (encoder, model) -> float [S, N, C] test probabilities, seeds sorted, rows as `slides`.
    """

    classes: list[str]
    per_run: pd.DataFrame
    summary: pd.DataFrame
    slides: dict[Method, pd.DataFrame]
    probs: dict[Method, np.ndarray]
    seeds: dict[Method, list[int]]


def _seed_matrix(method: Method, tests: list[pd.DataFrame], classes: Sequence[str]
                 ) -> tuple[pd.DataFrame, np.ndarray, list[int]]:
    """Test rows of one method (with fold, seed columns) -> (slides [N] y/fold, probs [S, N, C], seeds)."""
    cols = [f"prob_{c}" for c in classes]
    rows = pd.concat(tests, ignore_index=True)
    twice = rows.duplicated(["slide_id", "seed"])
    if twice.any():
        sid, seed = rows.loc[twice, ["slide_id", "seed"]].iloc[0]
        raise ValueError(f"{method[0]}/{method[1]}: slide {sid} is a test slide in two folds of seed {seed}: "
                         "the predictions come from different fold tables (stale files?)")
    g = rows.groupby("slide_id", sort=True)
    if (g["y"].nunique() > 1).any() or (g["fold"].nunique() > 1).any():
        raise ValueError(f"{method[0]}/{method[1]}: a slide's label or test fold differs between seeds")
    seeds = sorted(rows["seed"].unique().tolist())
    per_slide = g["seed"].nunique()
    keep = per_slide.index[per_slide == len(seeds)]
    if len(keep) < len(per_slide):  # e.g. a seed's run lost slides: compare seeds on the same slides
        log.warning("%s/%s: %d test slides lack a prediction for some seed and are left out",
                    *method, len(per_slide) - len(keep))
    slides = pd.DataFrame({"y": g["y"].first(), "fold": g["fold"].first()}).loc[keep]
    probs = np.stack([rows[rows["seed"] == s].set_index("slide_id").loc[keep, cols].to_numpy(dtype=np.float64)
                      for s in seeds]) if len(seeds) else np.zeros((0, 0, len(cols)))
    return slides, probs, seeds


def evaluate_runs(runs: Iterable[Run | dict[str, Any]], classes: Sequence[str], n_boot: int = 1000,
                  seed: int = 0) -> Evaluation:
    """Per-run rows, per-method summary rows and per-seed test predictions (module docstring)."""
    classes = list(classes)
    runs = sorted({_as_run(r) for r in runs}, key=lambda r: (r.encoder, r.model, r.fold, r.seed))
    keys = [(r.encoder, r.model, r.fold, r.seed) for r in runs]
    if len(set(keys)) != len(keys):
        raise ValueError("runs list the same (encoder, model, fold, seed) twice")
    rows, preds, tests = [], {}, {}
    for run in runs:
        df = load_predictions(run.predictions_csv, classes)
        row, pred = run_row(run, df, classes)
        if row["n_test"] == 0:
            log.warning("%s/%s fold %d seed %d: no test slides in %s", run.encoder, run.model, run.fold,
                        run.seed, run.predictions_csv)
        rows.append(row)
        test = df[df["role"] == "test"].assign(fold=run.fold, seed=run.seed)
        preds.setdefault(run.method, []).append((test["y"].to_numpy(), pred))
        tests.setdefault(run.method, []).append(test)
    per_run = pd.DataFrame(rows, columns=RUN_COLUMNS)

    summary, slides, probs, seeds = [], {}, {}, {}
    for method in sorted(tests):
        sl, pr, sd = _seed_matrix(method, tests[method], classes)
        slides[method], probs[method], seeds[method] = sl, pr, sd
        y = sl["y"].to_numpy()
        lo, hi = auc_ci(y, pr, n_boot=n_boot, seed=seed)
        g = per_run[(per_run["encoder"] == method[0]) & (per_run["model"] == method[1])]
        fold_aucs = g["auc"].to_numpy(dtype=float)
        fold_aucs = fold_aucs[np.isfinite(fold_aucs)]
        y_all = np.concatenate([a for a, _ in preds[method]])
        pred_all = np.concatenate([b for _, b in preds[method]])
        summary.append({
            "encoder": method[0], "model": method[1], "n_runs": len(g), "n_folds": g["fold"].nunique(),
            "n_seeds": g["seed"].nunique(), "n_test_slides": len(sl), "pooled_auc": seed_mean_auc(y, pr) if len(sl) else np.nan,
            "pooled_auc_ci_lo": lo, "pooled_auc_ci_hi": hi,
            "fold_auc_mean": float(fold_aucs.mean()) if fold_aucs.size else float("nan"),
            "fold_auc_sd": float(fold_aucs.std(ddof=1)) if fold_aucs.size > 1 else float("nan"),
            **label_metrics(y_all, pred_all, len(classes))})
    return Evaluation(classes, per_run, pd.DataFrame(summary, columns=SUMMARY_COLUMNS), slides, probs, seeds)


def compare(ev: Evaluation, a: Method, b: Method, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Paired comparison of methods a and b on the test slides both predicted (a comparisons.csv row)."""
    for m in (a, b):
        if m not in ev.slides:
            raise KeyError(f"no predictions for {m[0]}/{m[1]}")
    sa, sb = ev.slides[a], ev.slides[b]
    common = sa.index.intersection(sb.index).sort_values()
    if (sa.loc[common, "y"] != sb.loc[common, "y"]).any():
        raise ValueError(f"{a[0]}/{a[1]} and {b[0]}/{b[1]} disagree on test labels")
    y = sa.loc[common, "y"].to_numpy()
    pa = _scores_3d(ev.probs[a][:, sa.index.get_indexer(common)])
    pb = _scores_3d(ev.probs[b][:, sb.index.get_indexer(common)])
    boot = paired_auc_bootstrap(y, pa, pb, n_boot=n_boot, seed=seed)
    p_delong = delong_test(y, pa, pb)["p"] if pa.ndim == 2 else float("nan")
    return {"a_encoder": a[0], "a_model": a[1], "b_encoder": b[0], "b_model": b[1], "n_slides": len(common),
            "n_seeds_a": len(ev.seeds[a]), "n_seeds_b": len(ev.seeds[b]),
            "auc_a": boot["auc_a"], "auc_b": boot["auc_b"], "auc_diff": boot["diff"],
            "diff_ci_lo": boot["ci_lo"], "diff_ci_hi": boot["ci_hi"], "p_value": boot["p"],
            "p_delong": p_delong}


def _scores_3d(probs: np.ndarray) -> np.ndarray:
    """[S, N, 2] -> [S, N] positive-class probability; [S, N, C>2] kept."""
    return probs[:, :, 1] if probs.shape[2] == 2 else probs


def parse_method(text: str) -> Method:
    """'encoder/model' -> (encoder, model)."""
    parts = str(text).split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"config evaluate.compare: {text!r} is not 'encoder/model'")
    return parts[0], parts[1]


def comparison_pairs(methods: Iterable[Method], baseline_encoder: str, baseline_model: str | None,
                     extra: Sequence[dict[str, str]] = ()) -> list[tuple[Method, Method, str]]:
    """(a, b, source) pairs, a - b reported: every encoder vs the baseline encoder under the same model
    (source "encoder"), every model vs the baseline model on the same encoder ("model"), then the
    configured pairs ("config"; each {a: 'encoder/model', b: 'encoder/model'}), without repeats."""
    methods = sorted(set(methods))
    have = set(methods)
    pairs: list[tuple[Method, Method, str]] = []
    for enc, mod in methods:
        if enc != baseline_encoder and (baseline_encoder, mod) in have:
            pairs.append(((enc, mod), (baseline_encoder, mod), "encoder"))
    for enc, mod in methods:
        if baseline_model and mod != baseline_model and (enc, baseline_model) in have:
            pairs.append(((enc, mod), (enc, baseline_model), "model"))
    seen = {(a, b) for a, b, _ in pairs}
    for item in extra:
        a, b = parse_method(item["a"]), parse_method(item["b"])
        for m in (a, b):
            if m not in have:
                raise ValueError(f"config evaluate.compare: {m[0]}/{m[1]} has no predictions "
                                 f"(benchmarked: {[f'{e}/{o}' for e, o in methods]})")
        if (a, b) not in seen:
            pairs.append((a, b, "config"))
            seen.add((a, b))
    return pairs


def comparisons_table(ev: Evaluation, pairs: Sequence[tuple[Method, Method, str]], n_boot: int = 1000,
                      seed: int = 0) -> pd.DataFrame:
    """One comparisons.csv row per pair (COMPARISON_COLUMNS)."""
    rows = [{**compare(ev, a, b, n_boot, seed), "source": src} for a, b, src in pairs]
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def resolve_baselines(methods: Iterable[Method], params: EvaluateConfig,
                      encoder_order: Sequence[str] = ()) -> tuple[str, str | None]:
    """(baseline encoder, baseline model) from config `evaluate` (baseline_encoder: null = the first
    benchmarked encoder in config order; the baseline model is None when it is not benchmarked)."""
    methods = set(methods)
    encoders = [e for e in encoder_order if any(m[0] == e for m in methods)]
    encoders += sorted({e for e, _ in methods} - set(encoders))
    models = {m for _, m in methods}
    base_enc = params.baseline_encoder or (encoders[0] if encoders else "")
    if methods and base_enc not in encoders:
        raise ValueError(f"config evaluate.baseline_encoder {base_enc!r} has no predictions "
                         f"(benchmarked encoders: {encoders})")
    base_mod: str | None = params.baseline_model
    if base_mod not in models:
        log.warning("baseline model %r is not benchmarked (%s): no model comparisons", base_mod, sorted(models))
        base_mod = None
    return base_enc, base_mod


def _roc_points(y: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC (fpr, tpr); for C > 2 the micro-average over one-vs-rest indicator columns."""
    from sklearn.metrics import roc_curve

    if prob.shape[1] == 2:
        fpr, tpr, _ = roc_curve(y, prob[:, 1])
    else:
        onehot = np.eye(prob.shape[1], dtype=int)[y]
        fpr, tpr, _ = roc_curve(onehot.ravel(), prob.ravel())
    return fpr, tpr


def write_csv(table: pd.DataFrame, path: str | Path) -> None:
    """Write a table via a temp name, so a killed job never leaves a half-written CSV."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def plot_roc(ev: Evaluation, plot_png: str | Path) -> None:
    """ROC curves of the seed-averaged test predictions pooled over folds, one per method."""
    import matplotlib

    matplotlib.use("Agg")  # headless cluster nodes
    import matplotlib.pyplot as plt

    multi = len(ev.classes) > 2
    fig, ax = plt.subplots(figsize=(5.5, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, ((enc, mod), sl) in enumerate(sorted(ev.slides.items())):
        y, probs = sl["y"].to_numpy(), ev.probs[(enc, mod)]
        if len(np.unique(y)) < 2:
            log.warning("%s/%s: test slides of one class only, no ROC curve", enc, mod)
            continue
        n_seeds = len(probs)
        name = "macro AUC" if multi else "AUC"
        label = f"{enc} / {mod} ({name} {seed_mean_auc(y, _scores_3d(probs)):.3f}"
        label += f", mean of {n_seeds} seeds)" if n_seeds > 1 else ")"
        for s, p in enumerate(probs):  # one curve per seed: the spread between training runs shows
            fpr, tpr = _roc_points(y, p)
            ax.plot(fpr, tpr, lw=1.2, alpha=0.8 if n_seeds > 1 else 1.0, c=colours[k % len(colours)],
                    label=label if s == 0 else None)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    title = "ROC, test slides pooled over folds, one curve per seed" + (" (micro-average)" if multi else "")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title(title, fontsize="medium")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    with atomic_path(plot_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_evaluation(runs: Iterable[Run | dict[str, Any]], classes: Sequence[str], out: dict[str, str | Path],
                     params: dict[str, Any] | None = None, encoders: Sequence[dict[str, Any]] = (),
                     models: dict[str, Any] | list[str] | None = None,
                     pretrain: dict[str, Any] | None = None, n_boot: int = 1000, seed: int = 0) -> Evaluation:
    """Compute and write every evaluate output.

    out: paths for keys table (benchmark.csv), runs (benchmark_runs.csv), plot (roc.png) and
    optionally comparisons (comparisons.csv) and claims (claims.csv). params: config `evaluate`
    (baseline_encoder, baseline_model, compare, claim_margin). encoders: config `encoders` (names in
    order + metadata the claims read); models: config `mil.models` (run parameters the claims read);
    pretrain: config `pretrain` (pretrained encoders, after `encoders` in order; their metadata).
    """
    from slidemil.evaluate.claims import ClaimContext, claims_table, encoder_metadata, normalise_models

    cfg = from_block(EvaluateConfig, params, "evaluate")
    ev = evaluate_runs(runs, classes, n_boot=n_boot, seed=seed)
    write_csv(ev.summary, out["table"])
    write_csv(ev.per_run, out["runs"])
    plot_roc(ev, out["plot"])
    encoders = encoder_metadata(list(encoders), pretrain)
    base_enc, base_mod = resolve_baselines(ev.slides, cfg, [e["name"] for e in encoders])
    if out.get("comparisons"):
        pairs = comparison_pairs(ev.slides, base_enc, base_mod, cfg.compare)
        write_csv(comparisons_table(ev, pairs, n_boot, seed), out["comparisons"])
    if out.get("claims"):
        ctx = ClaimContext(encoders=list(encoders), methods=set(ev.slides), baseline_encoder=base_enc,
                           baseline_model=cfg.baseline_model, margin=cfg.claim_margin,
                           compare=lambda a, b: compare(ev, a, b, n_boot, seed),
                           models=normalise_models(models) or {m: {} for _, m in ev.slides})
        write_csv(claims_table(ctx), out["claims"])
    return ev
