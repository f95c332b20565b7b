"""Camelyon16's sample sheet: normal_NNN/tumor_NNN train slides labelled by name, test_NNN slides
labelled by the official testing/reference.csv, lesion annotations (ASAP XML) recorded per slide.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

from slidemil.cohorts.annotations import read_asap_annotation
from slidemil.cohorts.registry import register_builder
from slidemil.cohorts.sheet import CohortError, SampleRow, drop_missing

log = logging.getLogger(__name__)

CAMELYON16_CLASSES = ("normal", "tumor")  # first is the negative class
_CAMELYON16_NAME = re.compile(r"^(normal|tumor|test)_(\d{3})\.tif$", re.IGNORECASE)
_CAMELYON16_REFERENCE_LABELS = {"normal": "normal", "tumor": "tumor"}


def read_camelyon16_reference(path: str | os.PathLike) -> dict[str, str]:
    """Read the official test labels: rows ``test_001,Tumor,Macro,Metastases`` / ``test_002,Normal``.

    Returns {slide_id (lower case): label in CAMELYON16_CLASSES}. A header row is tolerated.
    """
    path = Path(path)
    if not path.is_file():
        raise CohortError(f"{path}: file not found")
    labels: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            row = [c.strip() for c in row]
            if not row or not any(row):
                continue
            if lineno == 1 and not re.match(r"^test_\d+$", row[0], re.IGNORECASE):
                continue  # header
            if len(row) < 2:
                raise CohortError(
                    f"{path}:{lineno}: expected 'test_NNN,Tumor|Normal[,...]', got {','.join(row)!r}"
                )
            slide, label = row[0].lower(), row[1].lower()
            if not re.match(r"^test_\d{3}$", slide):
                raise CohortError(f"{path}:{lineno}: {row[0]!r} is not a test slide id (test_NNN)")
            if label not in _CAMELYON16_REFERENCE_LABELS:
                raise CohortError(
                    f"{path}:{lineno}: unknown label {row[1]!r} for {row[0]} (expected Tumor or Normal)"
                )
            if slide in labels:
                raise CohortError(f"{path}:{lineno}: {row[0]} listed twice")
            labels[slide] = _CAMELYON16_REFERENCE_LABELS[label]
    if not labels:
        raise CohortError(f"{path}: no rows")
    return labels


def build_camelyon16(
    slides: str | os.PathLike,
    reference: str | os.PathLike | None = None,
    annotations: str | os.PathLike | None = None,
    strict: bool = False,
    exclude: Iterable[str] = (),
) -> list[SampleRow]:
    """Camelyon16 sheet from the slide folder (searched recursively), the official split and labels.

    normal_NNN/tumor_NNN: split train, label from the name; test_NNN: split test, label from
    ``reference`` (testing/reference.csv). One slide per patient, so patient_id = slide_id.
    ``annotations``: folder (searched recursively) of ``<slide_id>.xml`` lesion annotations,
    recorded in the ``annotation`` column. Files not named like Camelyon16 slides (e.g. masks)
    are ignored. ``exclude``: slide ids to leave out (e.g. test_049, a duplicate of a train slide).
    """
    slides = Path(slides)
    if not slides.is_dir():
        raise CohortError(f"{slides}: slide folder not found")
    found: dict[str, Path] = {}
    for p in sorted(slides.rglob("*")):
        if not _CAMELYON16_NAME.match(p.name) or not p.is_file():
            continue
        sid = p.stem.lower()
        if sid in found:
            raise CohortError(f"slide {sid} found twice: {found[sid]} and {p}")
        found[sid] = p
    if not found:
        raise CohortError(f"{slides}: no Camelyon16 slides (normal_NNN.tif, tumor_NNN.tif, test_NNN.tif)")
    excluded = {e.lower() for e in exclude}

    ref: dict[str, str] = {}
    tests_on_disk = sorted(s for s in found if s.startswith("test_"))
    if reference is not None:
        ref = read_camelyon16_reference(reference)
    elif tests_on_disk:
        raise CohortError(
            f"{found[tests_on_disk[0]]}: test slides need labels: pass --reference testing/reference.csv"
        )
    for sid in tests_on_disk:
        if sid not in ref and sid not in excluded:
            raise CohortError(f"{found[sid]}: no label for {sid} in {reference}")
    drop_missing(sorted(s for s in ref if s not in found and s not in excluded), str(reference), strict)

    xmls: dict[str, Path] = {}
    if annotations is not None:
        annotations = Path(annotations)
        if not annotations.is_dir():
            raise CohortError(f"{annotations}: annotation folder not found")
        xmls = {p.stem.lower(): p for p in sorted(annotations.rglob("*.xml"))}

    rows = []
    for sid, p in sorted(found.items()):
        if sid in excluded:
            continue
        kind = sid.split("_")[0]
        label = ref[sid] if kind == "test" else kind
        xml = xmls.get(sid)
        if xml is not None:
            read_asap_annotation(xml)  # fail early on a broken file
        rows.append(
            SampleRow(
                slide_id=sid,
                path=str(p.resolve()),
                label=label,
                patient_id=sid,
                split="test" if kind == "test" else "train",
                annotation=str(xml.resolve()) if xml is not None else None,
            )
        )
    if annotations is not None:
        lacking = [r.slide_id for r in rows if r.label == "tumor" and r.annotation is None]
        if lacking:
            log.warning("%d tumor slide(s) have no lesion annotation in %s, e.g. %s",
                        len(lacking), annotations, lacking[0])
    return rows


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slides", required=True, help="folder with normal_NNN.tif, tumor_NNN.tif, test_NNN.tif (recursive)")
    p.add_argument("--reference", help="testing/reference.csv with the test labels")
    p.add_argument("--annotations", help="folder of lesion annotation XMLs <slide_id>.xml (recursive)")
    p.add_argument("--exclude", action="append", default=[], metavar="SLIDE_ID", help="leave a slide out (repeatable)")


@register_builder("camelyon16", "Camelyon16 (normal/tumor, official train/test split)", _arguments)
def camelyon16(args: argparse.Namespace) -> list[SampleRow]:
    return build_camelyon16(args.slides, args.reference, args.annotations, args.strict, args.exclude)
