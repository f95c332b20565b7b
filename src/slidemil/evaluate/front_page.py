"""The report's front page: the researcher's slides first, then the benchmark, comparisons and claims.

`cohort_table` joins the sample sheet (label), the QC table (status, reason), the folds (the slide's
role) and the MIL runs' test predictions (one column per encoder / model): failed and empty slides
come first, with their reasons. `front_page_html` turns it and the benchmark's tables into the HTML
fragment that workflow/report/workflow.rst includes: numbers with 3 decimals, a CI beside its
estimate ("0.812 [0.701, 0.905]"), only the columns a reader compares, and no section for an empty
table (docutils would print its error into the page). The claims section is for claims benchmarks
(the synthetic demo cohort) only.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from slidemil.evaluate.benchmark import parse_run_path
from slidemil.files import atomic_path

NBSP = "\u00a0"  # inside "0.812 [0.701, 0.905]": the cell wraps between columns, never inside an estimate
STATUS_ORDER = {"failed": 0, "empty": 1}  # then ok (and any other status) by slide id
NOT_TILED = "not tiled"  # in the sheet but not in the QC table (the run stopped before QC)


def fmt(value: object, digits: int = 3) -> str:
    """A cell: floats with `digits` decimals, whole numbers bare, missing values empty."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() and abs(value) >= 1 else f"{value:.{digits}f}"
    return str(value)


def with_ci(est: object, lo: object, hi: object) -> str:
    """'0.812 [0.701, 0.905]'; the estimate alone where the CI is missing."""
    if fmt(lo) == "" or fmt(hi) == "":
        return fmt(est)
    return f"{fmt(est)}{NBSP}[{fmt(lo)},{NBSP}{fmt(hi)}]"


def split_roles(folds: pd.DataFrame) -> dict[str, str]:
    """slide_id -> its role: 'test (fold k)' with several folds, else the role of the one split."""
    n_folds = folds["fold"].nunique()
    roles: dict[str, str] = {}
    for sid, rows in folds.groupby("slide_id", sort=False):
        test = rows.loc[rows["role"] == "test", "fold"]
        if n_folds > 1 and len(test):
            roles[str(sid)] = f"test (fold {int(test.iloc[0])})"
        else:
            roles[str(sid)] = ", ".join(dict.fromkeys(rows["role"].astype(str)))
    return roles


def predictions_per_method(prediction_csvs: Sequence[str | Path]) -> dict[str, dict[str, str]]:
    """'encoder / model' -> slide_id -> 'class p' (predicted class and its probability, averaged over
    seeds) from the runs' test slides."""
    per_method: dict[str, list[pd.DataFrame]] = {}
    for path in prediction_csvs:
        run = parse_run_path(path)
        df = pd.read_csv(path, dtype={"slide_id": str})
        per_method.setdefault(f"{run.encoder} / {run.model}", []).append(df[df["role"] == "test"])
    out: dict[str, dict[str, str]] = {}
    for method, tests in per_method.items():
        probs = pd.concat(tests).groupby("slide_id").mean(numeric_only=True)
        probs = probs[[c for c in probs.columns if c.startswith("prob_")]]
        best = probs.idxmax(axis=1)
        out[method] = {sid: f"{best[sid].removeprefix('prob_')} {probs.at[sid, best[sid]]:.3f}" for sid in probs.index}
    return out


def cohort_table(sheet: pd.DataFrame, qc: pd.DataFrame, folds: pd.DataFrame,
                 prediction_csvs: Sequence[str | Path]) -> pd.DataFrame:
    """One row per slide of the sheet: slide_id, label, split, qc, reason, then the test prediction of
    each encoder / model ('tumour 0.912'). Failed slides first, then empty ones, then the rest."""
    status = qc.set_index(qc["slide_id"].astype(str))
    roles = split_roles(folds)
    table = pd.DataFrame({"slide_id": sheet["slide_id"].astype(str).to_numpy(),
                          "label": sheet["label"].astype(str).to_numpy()})
    table["qc"] = [str(status.at[s, "status"]) if s in status.index else NOT_TILED for s in table["slide_id"]]
    # a slide that is not ok is left out of MIL, whatever fold the sheet's split gave it
    table["split"] = [roles.get(s, "") if q == "ok" else "left out" for s, q in zip(table["slide_id"], table["qc"])]
    reasons = status["reason"].fillna("").astype(str) if "reason" in status else pd.Series(dtype=str)
    table["reason"] = [reasons.get(s, "") for s in table["slide_id"]]
    for method, preds in predictions_per_method(prediction_csvs).items():
        table[method] = [preds.get(s, "") for s in table["slide_id"]]
    order = table["qc"].map(lambda s: STATUS_ORDER.get(s, 2))
    return table.assign(_order=order).sort_values(["_order", "slide_id"], kind="stable").drop(columns="_order")


def benchmark_view(bench: pd.DataFrame) -> pd.DataFrame:
    """benchmark.csv as read: one row per encoder x model, AUC with its CI, 3 decimals."""
    view = pd.DataFrame({"encoder": bench["encoder"], "model": bench["model"]})
    auc = bench[["pooled_auc", "pooled_auc_ci_lo", "pooled_auc_ci_hi"]].to_numpy()
    view["AUC [95% CI]"] = [with_ci(*r) for r in auc]
    view["fold AUC mean ± sd"] = [f"{fmt(m)}{NBSP}±{NBSP}{fmt(s)}" if fmt(s) else fmt(m)
                                  for m, s in bench[["fold_auc_mean", "fold_auc_sd"]].to_numpy()]
    for col, name in (("balanced_accuracy", "balanced accuracy"), ("f1", "F1"), ("sensitivity", "sensitivity"),
                      ("specificity", "specificity"), ("n_test_slides", "test slides"), ("n_runs", "runs")):
        if col in bench:
            view[name] = bench[col].map(fmt)
    return view


def comparisons_view(comp: pd.DataFrame) -> pd.DataFrame:
    """comparisons.csv as read: a - b with the difference's CI and p-values."""
    return pd.DataFrame({
        "a": comp["a_encoder"] + " / " + comp["a_model"],
        "b": comp["b_encoder"] + " / " + comp["b_model"],
        "AUC a": comp["auc_a"].map(fmt), "AUC b": comp["auc_b"].map(fmt),
        "a − b [95% CI]": [with_ci(*r) for r in comp[["auc_diff", "diff_ci_lo", "diff_ci_hi"]].to_numpy()],
        "p": comp["p_value"].map(fmt),
        **({"p (DeLong)": comp["p_delong"].map(fmt)} if "p_delong" in comp else {}),
        "slides": comp["n_slides"].map(fmt),
    })


def claims_view(claims: pd.DataFrame) -> pd.DataFrame:
    """claims.csv as read: statement, comparison, gain with its CI, verdict and note."""
    return pd.DataFrame({
        "paper": claims["paper"], "claim": claims["statement"], "comparison": claims["comparison"].fillna(""),
        "AUC gain [95% CI]": [with_ci(*r) for r in claims[["auc_diff", "diff_ci_lo", "diff_ci_hi"]].to_numpy()],
        "p": claims["p_value"].map(fmt), "slides": claims["n_slides"].map(fmt),
        "verdict": claims["verdict"], "note": claims["note"].fillna(""),
    })


def froc_view(froc_csvs: Sequence[str | Path]) -> pd.DataFrame:
    """The lesion FROC rows (results/heatmaps/{encoder}/{model}/froc.csv) of models with lesions to find."""
    rows = []
    for path in froc_csvs:
        row = pd.read_csv(path).iloc[0]
        if not row.get("n_lesions", 0) > 0:
            continue  # no annotated lesion: a FROC of nothing
        encoder, model = Path(path).parts[-3:-1]
        sens = {c.removeprefix("sens_").replace("fp", " FP"): fmt(row[c]) for c in row.index if c.startswith("sens_")}
        rows.append({"encoder / model": f"{encoder} / {model}", "FROC": fmt(row["froc"]), **sens,
                     "slides": fmt(row["n_slides"]), "lesions": fmt(row["n_lesions"])})
    return pd.DataFrame(rows)


def html_table(table: pd.DataFrame, scroll: bool = False) -> str:
    """A table of class slidemil (workflow.rst's CSS); `scroll`: a box of fixed height, header kept."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>"
                   for row in table.itertuples(index=False))
    out = f'<table class="slidemil"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    return f'<div class="slidemil-scroll">{out}</div>' if scroll else out


def cohort_summary(cohort: pd.DataFrame) -> str:
    """'8 slides: 6 ok, 1 empty, 1 failed. Labels: 4 normal, 4 tumour.'"""
    counts = cohort["qc"].value_counts()
    labels = cohort["label"].value_counts().sort_index()
    return (f"{len(cohort)} slides: " + ", ".join(f"{n} {s}" for s, n in counts.items())
            + ". Labels: " + ", ".join(f"{n} {lab}" for lab, n in labels.items()) + ".")


def front_page_html(cohort: pd.DataFrame, bench: pd.DataFrame, comparisons: pd.DataFrame, claims: pd.DataFrame,
                    froc: pd.DataFrame, show_claims: bool) -> str:
    """The sections of the front page, empty ones left out."""
    sections = [("Slides", f"<p>{html.escape(cohort_summary(cohort))} Failed and empty slides first, with the "
                           "reason; a prediction is the class the model gives the slide as a test slide and its "
                           "probability (mean over seeds). Also in results/cohort.csv.</p>"
                 + html_table(cohort, scroll=len(cohort) > 20))]
    if len(bench):
        sections.append(("Benchmark", "<p>AUC of the test predictions pooled over folds with its bootstrap 95% CI; "
                                      "the other metrics at a threshold chosen on validation slides.</p>"
                         + html_table(benchmark_view(bench))))
    if len(comparisons):
        sections.append(("Comparisons", "<p>Paired on the same test slides: AUC difference a − b with its paired "
                                        "bootstrap 95% CI.</p>" + html_table(comparisons_view(comparisons))))
    if show_claims and len(claims):
        sections.append(("Claims", html_table(claims_view(claims))))
    if len(froc):
        sections.append(("Lesion-level FROC", "<p>Sensitivity at each rate of false positives per slide "
                                              "(Camelyon16).</p>" + html_table(froc)))
    return "\n".join(f'<h2 class="slidemil">{title}</h2>\n{body}' for title, body in sections) + "\n"


def write_front_page(sheet: pd.DataFrame, qc: str | Path, folds: str | Path, prediction_csvs: Sequence[str | Path],
                     bench: str | Path, comparisons: str | Path, claims: str | Path, froc_csvs: Sequence[str | Path],
                     show_claims: bool, cohort_out: str | Path, page_out: str | Path) -> pd.DataFrame:
    """results/cohort.csv (the slides table) and the front page's HTML fragment; returns the table."""
    cohort = cohort_table(sheet, pd.read_csv(qc, sep="\t", dtype={"slide_id": str}),
                          pd.read_csv(folds, dtype={"slide_id": str}), prediction_csvs)
    page = front_page_html(cohort, pd.read_csv(bench), pd.read_csv(comparisons), pd.read_csv(claims),
                           froc_view(froc_csvs), show_claims)
    with atomic_path(Path(cohort_out)) as tmp:
        cohort.to_csv(tmp, index=False)
    with atomic_path(Path(page_out)) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return cohort
