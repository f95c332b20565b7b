"""The end-of-run summary: slides ok / empty / failed, the first reasons and where the QC table is.

A run whose slides failed used to end in "25 of 25 steps done" and exit 0: with `on_slide_error: skip`
a failed slide is data, not an error. So every run ends with this summary (the Snakefile's onsuccess
and onerror call `print_run_summary`), and the qc_cohort job stops the run when more than
`max_failed_fraction` of the slides failed (`check_failed_fraction`), before anything trains on what
is left. Torch-free: planning imports it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pandas as pd

from slidemil.slides.failures import EMPTY, FAILED, OK, SlideFailure

log = logging.getLogger(__name__)

SHOWN = 5  # slides listed with their reason; the QC table has every one


def failed_fraction(table: pd.DataFrame) -> float:
    """Share of the table's slides whose status is failed (0 for an empty table)."""
    return float((table["status"] == FAILED).mean()) if len(table) else 0.0


def too_many_failed(table: pd.DataFrame, max_failed_fraction: float, on_error: str = "skip") -> bool:
    """With on_error 'skip': whether more than `max_failed_fraction` of the slides failed. ('fail' stops
    at the first failed slide already.)"""
    return on_error == "skip" and failed_fraction(table) > max_failed_fraction


def summary_lines(table: pd.DataFrame, table_path: str | Path | None, max_failed_fraction: float | None = None,
                  on_error: str = "skip") -> list[str]:
    """The summary: counts, the first SHOWN slides that are not ok with their reasons, flags, the table's path.

    table: the QC table (slidemil.slides.qc.cohort_table). table_path: where it is, or None when it was
    not written (the lines then say so)."""
    counts = table["status"].value_counts() if len(table) else pd.Series(dtype=int)
    n = len(table)
    head = (f"slidemil: {n} slides: {counts.get(OK, 0)} ok, {counts.get(EMPTY, 0)} empty, "
            f"{counts.get(FAILED, 0)} failed")
    if max_failed_fraction is not None and too_many_failed(table, max_failed_fraction, on_error):
        head += (f" ({failed_fraction(table):.0%} failed, more than max_failed_fraction {max_failed_fraction:g}: "
                 "the run stops before training on what is left; fix or remove the failed slides in the sheet, "
                 "or raise max_failed_fraction)")
    lines = [head]
    bad = table[table["status"] != OK].sort_values("status", key=lambda s: s != FAILED, kind="stable")
    for _, r in bad.head(SHOWN).iterrows():
        lines.append(f"  {r['status']} {r['slide_id']}: {r['reason']}")
    if len(bad) > SHOWN:
        lines.append(f"  ... and {len(bad) - SHOWN} more")
    flags = table["flags"].fillna("").astype(str).str.split(",").explode() if "flags" in table else pd.Series()
    flags = flags[flags != ""].value_counts()
    if len(flags):
        lines.append("  flagged: " + ", ".join(f"{f} {k}" for f, k in flags.items()))
    lines.append(f"  QC table: {table_path}" if table_path else
                 "  QC table: not written (the run stopped before it, or at max_failed_fraction); "
                 "every slide's reason: logs/qc_cohort/cohort.log, results/masks/<slide>.json")
    return lines


def check_failed_fraction(table: pd.DataFrame, table_path: str | Path, max_failed_fraction: float,
                          on_error: str = "skip") -> None:
    """The qc_cohort job's gate: log the summary as ERROR lines and raise SlideFailure (the CLI exits 1,
    so the run stops) when more than `max_failed_fraction` of the slides failed."""
    if too_many_failed(table, max_failed_fraction, on_error):
        for line in summary_lines(table, None, max_failed_fraction, on_error):
            log.error("%s", line)
        raise SlideFailure(f"{failed_fraction(table):.0%} of the slides failed (max_failed_fraction "
                           f"{max_failed_fraction:g}); see {table_path}")


def current_table(samples: str | Path, qc_table: str | Path, tiles_dir: str | Path = "results/tiles",
                  masks_dir: str | Path = "results/masks") -> tuple[pd.DataFrame, str | None]:
    """The QC table and its path when it exists and is newer than the sheet; else one made from the
    per-slide outputs of the sheet's slides that have them (tile store and mask sidecar), and None."""
    from slidemil.cohorts.sheet import read_sheet
    from slidemil.slides.qc import cohort_table

    qc_table, samples = Path(qc_table), Path(samples)
    if qc_table.exists() and (not samples.exists() or qc_table.stat().st_mtime >= samples.stat().st_mtime):
        return pd.read_csv(qc_table, sep="\t", dtype={"slide_id": str}, keep_default_na=False), str(qc_table)
    ids = [str(s) for s in read_sheet(samples)["slide_id"]] if samples.exists() else []
    have = [s for s in ids if (Path(tiles_dir) / f"{s}.zarr").exists() and (Path(masks_dir) / f"{s}.json").exists()]
    if not have:
        return pd.DataFrame(columns=["slide_id", "status", "reason", "flags"]), None
    return cohort_table([str(Path(tiles_dir) / f"{s}.zarr") for s in have],
                        [str(Path(masks_dir) / f"{s}.json") for s in have]), None


def print_run_summary(samples: str | Path, qc_table: str | Path, max_failed_fraction: float | None = None,
                      on_error: str = "skip", stream=None) -> None:
    """Print the summary at the end of a run (Snakefile onsuccess/onerror). Never raises: the run's own
    result must not be hidden by a summary that could not be made."""
    stream = stream or sys.stderr
    try:
        table, path = current_table(samples, qc_table)
        if not len(table):
            return  # nothing tiled yet: no slide to speak of
        print("\n".join(summary_lines(table, path, max_failed_fraction, on_error)), file=stream)
    except Exception as e:  # noqa: BLE001 - a summary is a courtesy, never the run's failure
        print(f"slidemil: no end-of-run summary ({type(e).__name__}: {e})", file=stream)
