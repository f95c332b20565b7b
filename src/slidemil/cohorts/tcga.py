"""TCGA sample sheets from GDC manifests (and clinical tables): any projects, or the NSCLC (LUAD vs LUSC)
and RCC (KIRC, KIRP, KICH) cohorts. Diagnostic slides of tumour samples by default.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slidemil.cohorts.registry import register_builder
from slidemil.cohorts.sheet import CohortError, SampleRow, drop_missing

log = logging.getLogger(__name__)

# Cohort name -> classes (first is the negative class); the label is the TCGA project without "TCGA-".
TCGA_COHORTS: dict[str, tuple[str, ...]] = {
    "tcga_nsclc": ("LUAD", "LUSC"),
    "tcga_rcc": ("KIRC", "KIRP", "KICH"),
}
DIAGNOSTIC_SLIDE_TYPES = ("DX",)  # formalin-fixed paraffin-embedded diagnostic slides
FROZEN_SLIDE_TYPES = ("TS", "BS", "MS")  # top / bottom / middle frozen sections
# TCGA-05-4244-01Z-00-DX1.<uuid>.svs: patient, sample type (01-09 tumour, 10-19 normal), vial,
# portion, slide type and number.
_TCGA_SLIDE = re.compile(
    r"^(?P<patient>TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})-(?P<sample>\d{2})[A-Z]?-(?P<portion>\d{2})[A-Z]?-"
    r"(?P<type>[A-Z]{2})(?P<number>[0-9A-Z]+)\b",
    re.IGNORECASE,
)
_MANIFEST_COLUMNS = (("id",), ("filename",))
_CLINICAL_CASE = ("case_submitter_id", "submitter_id", "cases.submitter_id", "Case ID")
_CLINICAL_PROJECT = ("project_id", "project.project_id", "Project ID")


@dataclass(frozen=True)
class TcgaBarcode:
    """The parts of a TCGA slide barcode the builder uses."""

    patient_id: str  # first 12 characters, e.g. TCGA-05-4244
    sample_type: int  # 1-9 tumour, 10-19 normal, 20-29 control
    slide_type: str  # DX, TS, BS, MS


def parse_tcga_slide_name(filename: str) -> TcgaBarcode | None:
    """Parse a TCGA slide file name; None if it is not one."""
    m = _TCGA_SLIDE.match(filename)
    if m is None:
        return None
    return TcgaBarcode(m["patient"].upper(), int(m["sample"]), m["type"].upper())


def _project_to_label(project: str) -> str:
    project = project.strip().upper()
    return project[len("TCGA-") :] if project.startswith("TCGA-") else project


def read_table(path: Path, required: Sequence[Sequence[str]]) -> tuple[list[dict[str, str]], list[str]]:
    """Read a CSV/TSV with a header (tab unless the file is .csv).

    ``required`` lists, per needed column, the accepted names (aliases); returns the rows and the
    chosen name for each needed column. Raises CohortError naming the file and missing column.
    """
    if not path.is_file():
        raise CohortError(f"{path}: file not found")
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        rows = list(reader)
    chosen = []
    for aliases in required:
        name = next((a for a in aliases if a in header), None)
        if name is None:
            names = " or ".join(map(repr, aliases))
            raise CohortError(f"{path}: missing column {names} (header: {', '.join(header)})")
        chosen.append(name)
    return rows, chosen


def read_tcga_projects(clinical: str | os.PathLike) -> dict[str, str]:
    """{patient_id: label} from a GDC clinical table or sample sheet.

    Needs a case column (case_submitter_id, submitter_id or 'Case ID') and a project column
    (project_id or 'Project ID', e.g. TCGA-LUAD -> label LUAD). Several rows per case are fine
    if they agree; '--' (GDC's missing value) rows are skipped.
    """
    clinical = Path(clinical)
    rows, (case_col, project_col) = read_table(clinical, (_CLINICAL_CASE, _CLINICAL_PROJECT))
    projects: dict[str, str] = {}
    for lineno, row in enumerate(rows, start=2):
        case = (row.get(case_col) or "").split(",")[0].strip().upper()
        project = (row.get(project_col) or "").split(",")[0].strip()
        if not case or case.startswith("'--") or case == "--":
            continue
        if not project or project in ("--", "'--"):
            raise CohortError(f"{clinical}:{lineno}: case {case} has no {project_col}")
        label = _project_to_label(project)
        if projects.get(case[:12], label) != label:
            raise CohortError(f"{clinical}:{lineno}: case {case} is in {project} and in TCGA-{projects[case[:12]]}")
        projects[case[:12]] = label
    return projects


def _find_gdc_file(slides: Path, file_id: str, filename: str) -> Path | None:
    """The GDC client writes slides/<file id>/<filename>; accept a flat slides/<filename> too."""
    for p in (slides / file_id / filename, slides / filename):
        if p.is_file():
            return p
    return None


def build_tcga(
    manifests: Sequence[tuple[str | os.PathLike, str | None]],
    slides: str | os.PathLike,
    classes: Sequence[str],
    clinical: str | os.PathLike | None = None,
    include_frozen: bool = False,
    strict: bool = False,
) -> list[SampleRow]:
    """TCGA sheet from GDC manifest(s) (columns id, filename, md5, size, state) and the slides.

    ``manifests``: (path, project) pairs; a project (e.g. 'LUAD' or 'TCGA-LUAD') labels every
    slide of that manifest, otherwise the label comes from ``clinical`` by patient. slide_id =
    file name without extension, patient_id = first 12 characters of the barcode. Only
    diagnostic slides (DX) of tumour samples by default; ``include_frozen`` adds TS/BS/MS.
    """
    slides = Path(slides)
    if not slides.is_dir():
        raise CohortError(f"{slides}: slide folder not found")
    classes = [c.upper() for c in classes]
    if not manifests:
        raise CohortError("no GDC manifest given")
    projects = read_tcga_projects(clinical) if clinical is not None else None
    types = DIAGNOSTIC_SLIDE_TYPES + (FROZEN_SLIDE_TYPES if include_frozen else ())

    rows: list[SampleRow] = []
    missing: list[str] = []
    skipped_type = skipped_normal = 0
    for manifest, project in manifests:
        manifest = Path(manifest)
        records, (id_col, name_col) = read_table(manifest, _MANIFEST_COLUMNS)
        fixed_label = _project_to_label(project) if project else None
        if fixed_label is not None and fixed_label not in classes:
            raise CohortError(f"{manifest}: project {project!r} is not one of {', '.join(classes)}")
        if fixed_label is None and projects is None:
            raise CohortError(
                f"{manifest}: no project for its slides: give --clinical or --manifest {manifest}=PROJECT"
            )
        for lineno, rec in enumerate(records, start=2):
            filename = (rec.get(name_col) or "").strip()
            file_id = (rec.get(id_col) or "").strip()
            if not filename:
                raise CohortError(f"{manifest}:{lineno}: empty {name_col}")
            barcode = parse_tcga_slide_name(filename)
            if barcode is None:
                raise CohortError(
                    f"{manifest}:{lineno}: {filename!r} is not a TCGA slide name (TCGA-XX-XXXX-01Z-00-DX1...)"
                )
            if barcode.slide_type not in types:
                skipped_type += 1
                continue
            if not 1 <= barcode.sample_type <= 9:
                skipped_normal += 1
                continue
            if fixed_label is not None:
                label = fixed_label
            else:
                assert projects is not None
                if barcode.patient_id not in projects:
                    raise CohortError(f"{manifest}:{lineno}: case {barcode.patient_id} is not in {clinical}")
                label = projects[barcode.patient_id]
            if label not in classes:
                raise CohortError(
                    f"{manifest}:{lineno}: {filename} has unknown label {label!r} (classes: {', '.join(classes)})"
                )
            path = _find_gdc_file(slides, file_id, filename)
            if path is None:
                missing.append(str(slides / file_id / filename))
                continue
            rows.append(
                SampleRow(
                    slide_id=filename.rsplit(".", 1)[0] if "." in filename else filename,
                    path=str(path.resolve()),
                    label=label,
                    patient_id=barcode.patient_id,
                )
            )
    if skipped_type:
        log.info("skipped %d slide(s) that are not of type %s", skipped_type, "/".join(types))
    if skipped_normal:
        log.info("skipped %d slide(s) of normal-tissue or control samples (sample type >= 10)", skipped_normal)
    drop_missing(missing, "the manifest(s)", strict)
    return rows


def _manifest_arg(value: str) -> tuple[str, str | None]:
    path, sep, project = value.partition("=")
    return path, (project or None) if sep else None


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, action="append", type=_manifest_arg, metavar="FILE[=PROJECT]",
                   help="GDC manifest (repeatable); =PROJECT labels all its slides (else from --clinical)")
    p.add_argument("--slides", required=True, help="gdc-client download folder (<id>/<filename>) or a flat folder")
    p.add_argument("--clinical", help="GDC clinical.tsv or sample sheet with case_submitter_id and project_id")
    p.add_argument("--include-frozen", action="store_true", help="also frozen sections (TS/BS/MS), not only DX")


def _arguments_with_classes(p: argparse.ArgumentParser) -> None:
    _arguments(p)
    p.add_argument("--classes", required=True, help="comma-separated labels, e.g. LUAD,LUSC")


def _build(args: argparse.Namespace, classes: Sequence[str]) -> list[SampleRow]:
    return build_tcga(args.manifest, args.slides, classes, args.clinical, args.include_frozen, args.strict)


@register_builder("tcga", "any TCGA projects (give --classes)", _arguments_with_classes)
def tcga(args: argparse.Namespace) -> list[SampleRow]:
    return _build(args, args.classes.split(","))


@register_builder("tcga_nsclc", "TCGA lung: LUAD vs LUSC", _arguments)
def tcga_nsclc(args: argparse.Namespace) -> list[SampleRow]:
    return _build(args, TCGA_COHORTS["tcga_nsclc"])


@register_builder("tcga_rcc", "TCGA kidney: KIRC, KIRP, KICH", _arguments)
def tcga_rcc(args: argparse.Namespace) -> list[SampleRow]:
    return _build(args, TCGA_COHORTS["tcga_rcc"])
