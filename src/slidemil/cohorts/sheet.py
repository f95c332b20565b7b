"""The sample sheet: its columns, writing it (the cohort builders), reading it with the checks a JSON
schema cannot express (files, duplicates, leakage), and the table of the cohort's annotation files.

A sheet is a TSV with columns ``slide_id, path, label, patient_id`` and the optional ``split``
(train/val/test), ``mpp`` and ``annotation``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from slidemil.files import atomic_path, write_text

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("slide_id", "path", "label", "patient_id")
OPTIONAL_COLUMNS = ("split", "mpp", "annotation")
SPLITS = ("train", "val", "test")


class CohortError(ValueError):
    """An input file does not have the shape the builder expects (message names file and row)."""


@dataclass(frozen=True)
class SampleRow:
    """One slide in the sample sheet."""

    slide_id: str
    path: str  # absolute path of the slide file
    label: str
    patient_id: str
    split: str | None = None  # train | val | test
    mpp: float | None = None  # microns per level-0 pixel, when known without opening the slide
    annotation: str | None = None  # absolute path of a lesion annotation (Camelyon16 ASAP XML)


def write_sheet(rows: Iterable[SampleRow], out: str | os.PathLike) -> Path:
    """Write rows as a TSV sorted by slide_id (temp file, then rename); return the path.

    Optional columns appear only if at least one row has a value. Raises CohortError on an empty
    cohort or duplicate slide ids.
    """
    rows = sorted(rows, key=lambda r: r.slide_id)
    if not rows:
        raise CohortError(f"{out}: no slides left to write")
    seen: dict[str, SampleRow] = {}
    for r in rows:
        if r.slide_id in seen:
            raise CohortError(f"duplicate slide_id {r.slide_id!r}: {seen[r.slide_id].path} and {r.path}")
        seen[r.slide_id] = r
    optional = [c for c in OPTIONAL_COLUMNS if any(getattr(r, c) is not None for r in rows)]
    columns = list(REQUIRED_COLUMNS) + optional
    out = Path(out)
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if getattr(r, c) is None else getattr(r, c) for c in columns])
    counts = {}
    for r in rows:
        counts[r.label] = counts.get(r.label, 0) + 1
    log.info("%s: %d slides, %d patients, labels %s", out, len(rows), len({r.patient_id for r in rows}), counts)
    return out


def drop_missing(missing: list[str], what: str, strict: bool) -> None:
    """Slides an input lists but the disk lacks: a warning and a count, or with `strict` a CohortError."""
    if not missing:
        return
    if strict:
        raise CohortError(
            f"{missing[0]}: listed in {what} but absent on disk ({len(missing)} missing in all; --strict)"
        )
    log.warning("dropped %d slide(s) listed in %s but absent on disk, e.g. %s", len(missing), what, missing[0])




class SampleSheetError(ValueError):
    """The sample sheet is unusable; each line of the message names a row and the fix."""


def read_sheet(path: str | Path) -> pd.DataFrame:
    """Read a TSV sample sheet as strings (except `mpp`), blank cells as missing."""
    path = Path(path)
    if not path.is_file():
        raise SampleSheetError(f"{path}: sample sheet not found; set `samples` in the config")
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[""], comment="#")
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise SampleSheetError(f"{path}: missing column(s) {', '.join(missing)}; "
                               f"a sample sheet needs {', '.join(REQUIRED_COLUMNS)} (tab-separated)")
    if "mpp" in df.columns:
        df["mpp"] = pd.to_numeric(df["mpp"], errors="coerce")
    return df


def check_sheet(df: pd.DataFrame, classes: Iterable[str], sheet: str | Path = "samples.tsv",
                will_exist: Iterable[str] = ()) -> None:
    """Raise `SampleSheetError` listing every problem, one line per row ('row N' = TSV line N)."""
    classes, will_exist = list(classes), set(map(str, will_exist))
    errors: list[str] = []

    def row(i: int) -> str:
        return f"{sheet} line {i + 2}"  # +1 header, +1 one-based

    for i, r in df.iterrows():
        for col in REQUIRED_COLUMNS:
            if pd.isna(r[col]) or not str(r[col]).strip():
                errors.append(f"{row(i)}: empty {col}; fill it in")
        if not pd.isna(r["label"]) and r["label"] not in classes:
            errors.append(f"{row(i)} ({r['slide_id']}): unknown label {r['label']!r}; "
                          f"use one of {classes} or add it to config `classes`")
        if not pd.isna(r["path"]) and r["path"] not in will_exist and not Path(r["path"]).is_file():
            errors.append(f"{row(i)} ({r['slide_id']}): slide file {r['path']} not found; "
                          "fix the path (relative to the working directory) or remove the row")
        if "split" in df.columns and not pd.isna(r["split"]) and r["split"] not in SPLITS:
            errors.append(f"{row(i)} ({r['slide_id']}): split {r['split']!r} is not one of {list(SPLITS)}")
        if "mpp" in df.columns and not pd.isna(r["mpp"]) and not r["mpp"] > 0:
            errors.append(f"{row(i)} ({r['slide_id']}): mpp must be a positive number (microns per pixel)")
    for sid, idx in df.groupby("slide_id").groups.items():
        if len(idx) > 1:
            lines = ", ".join(str(i + 2) for i in idx)
            errors.append(f"{sheet} lines {lines}: duplicate slide_id {sid!r}; slide ids must be unique")
    if "split" in df.columns:
        for pid, grp in df.dropna(subset=["split"]).groupby("patient_id"):
            if grp["split"].nunique() > 1:
                lines = ", ".join(str(i + 2) for i in grp.index)
                errors.append(f"{sheet} lines {lines}: patient {pid!r} is in splits "
                              f"{sorted(grp['split'].unique())}; a patient must stay in one split")
    if errors:
        raise SampleSheetError("\n".join(errors))


def label_indices(path: str | Path, classes: list[str]) -> dict[str, int]:
    """slide_id -> index of its label in `classes` (0 = the negative class), from the sheet at `path`."""
    sheet = read_sheet(path)
    return {str(s): classes.index(lab) for s, lab in zip(sheet["slide_id"], sheet["label"])}


def slide_paths(directory: str | Path, samples: str | Path, suffix: str) -> list[str]:
    """`{directory}/{slide_id}{suffix}` for every slide of the sheet, in its order.

    Rules over the whole cohort pass a folder and the sheet rather than n paths: at TCGA scale
    (10,000 slides) the list would pass Linux's 128 KiB limit on one argument ("Argument list too
    long"). The rule still declares every per-slide file as input, so Snakemake orders the jobs."""
    return [str(Path(directory) / f"{slide}{suffix}") for slide in read_sheet(samples)["slide_id"]]


# Where the demo workflow (config `demo.enabled`) writes each generated slide and its annotations.
DEMO_SLIDES = "results/demo/slides/{slide}.tiff"
DEMO_TUMOUR = "results/demo/annotations/{slide}.geojson"
DEMO_MIMIC = "results/demo/annotations/{slide}.mimic.geojson"  # slidemil.cohorts.demo.mimic_path of DEMO_TUMOUR


def annotation_table(sheet: pd.DataFrame, demo: bool) -> dict[str, dict[str, str]]:
    """{"tumour": {slide_id: GeoJSON/XML}, "mimic": {slide_id: GeoJSON}}: the sheet's `annotation`
    column, and for the demo's generated slides (path DEMO_SLIDES) their tumour and mimic outlines."""
    tumour: dict[str, str] = {}
    mimic: dict[str, str] = {}
    has_column = "annotation" in sheet.columns
    for i, (sid, path) in enumerate(zip(sheet["slide_id"], sheet["path"])):
        own = sheet["annotation"].iloc[i] if has_column else None
        generated = demo and path == DEMO_SLIDES.format(slide=sid)
        if isinstance(own, str):
            tumour[sid] = own
        elif generated:
            tumour[sid] = DEMO_TUMOUR.format(slide=sid)
        if generated:
            mimic[sid] = DEMO_MIMIC.format(slide=sid)
    return {"tumour": tumour, "mimic": mimic}


def write_annotation_table(samples: str | Path, demo: bool, out: str | Path) -> None:
    """results/annotations.json: the annotation files of the cohort (probe, heatmaps and the mining
    evidence read it; as one command-line argument it would overflow at a few thousand slides)."""
    write_text(json.dumps(annotation_table(read_sheet(samples), demo), indent=1), out)


def read_annotation_table(path: str | Path | None) -> dict[str, dict[str, str]]:
    """The table written by write_annotation_table; no path: no annotations."""
    if not path:
        return {"tumour": {}, "mimic": {}}
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SampleSheetError(f"{path}: unreadable annotation table ({e}); delete it and rerun snakemake") from e
    return {"tumour": table.get("tumour", {}), "mimic": table.get("mimic", {})}
