"""Sample-sheet builders for the real cohorts: Camelyon16, TCGA-NSCLC and TCGA-RCC.

Each builder turns the files users download into the workflow's sample sheet, a TSV with columns
``slide_id, path, label, patient_id`` and the optional ``split`` (train/val/test), ``mpp`` and
``annotation``; an optional column is written only when some row has a value.

    python -m slidemil.cohorts.builders camelyon16 --slides CAMELYON16/ --reference testing/reference.csv \
        [--annotations lesion_annotations/] --out samples.tsv
    python -m slidemil.cohorts.builders tcga_nsclc --manifest gdc_manifest.txt --clinical clinical.tsv \
        --slides slides/ --out samples.tsv
    python -m slidemil.cohorts.builders tcga_rcc --manifest kirc.txt=KIRC --manifest kirp.txt=KIRP \
        --manifest kich.txt=KICH --slides slides/ --out samples.tsv

Input problems stop the builder with a one-line ``CohortError`` naming the file and row (missing
columns, unknown labels, malformed names). A slide listed in the reference/manifest but absent on
disk is dropped with a warning and a count, or is an error with ``--strict``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from slidemil.files import atomic_path

log = logging.getLogger("slidemil.cohorts.builders")

REQUIRED_COLUMNS = ("slide_id", "path", "label", "patient_id")
OPTIONAL_COLUMNS = ("split", "mpp", "annotation")


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


# ----------------------------------------------------------------------------- writing


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


def _read_table(path: Path, required: Sequence[Sequence[str]]) -> tuple[list[dict[str, str]], list[str]]:
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


def _drop_missing(missing: list[str], what: str, strict: bool) -> None:
    if not missing:
        return
    if strict:
        raise CohortError(
            f"{missing[0]}: listed in {what} but absent on disk ({len(missing)} missing in all; --strict)"
        )
    log.warning("dropped %d slide(s) listed in %s but absent on disk, e.g. %s", len(missing), what, missing[0])


# ----------------------------------------------------------------------------- Camelyon16

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


def read_asap_annotation(path: str | os.PathLike) -> list[tuple[str, str, list[tuple[float, float]]]]:
    """Read an ASAP lesion annotation XML (Camelyon16) as [(name, group, [(x, y), ...]), ...].

    Coordinates are level-0 pixels. Groups ``_0``/``_1``/``Tumor`` are lesions, ``_2``/``Exclusion``
    are holes to exclude (as in the Camelyon16 evaluation code).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise CohortError(f"{path}: not valid XML ({e})") from None
    if root.tag != "ASAP_Annotations":
        raise CohortError(f"{path}: root element is <{root.tag}>, expected <ASAP_Annotations>")
    out = []
    for ann in root.iter("Annotation"):
        coords = sorted(ann.iter("Coordinate"), key=lambda c: int(c.get("Order", 0)))
        try:
            # some ASAP versions write decimal commas
            xy = [(float(c.get("X", "").replace(",", ".")), float(c.get("Y", "").replace(",", ".")))
                  for c in coords]
        except ValueError:
            raise CohortError(f"{path}: annotation {ann.get('Name')!r} has a non-numeric coordinate") from None
        out.append((ann.get("Name", ""), ann.get("PartOfGroup", ""), xy))
    return out


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
    _drop_missing(sorted(s for s in ref if s not in found and s not in excluded), str(reference), strict)

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


# ----------------------------------------------------------------------------- TCGA

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


def read_tcga_projects(clinical: str | os.PathLike) -> dict[str, str]:
    """{patient_id: label} from a GDC clinical table or sample sheet.

    Needs a case column (case_submitter_id, submitter_id or 'Case ID') and a project column
    (project_id or 'Project ID', e.g. TCGA-LUAD -> label LUAD). Several rows per case are fine
    if they agree; '--' (GDC's missing value) rows are skipped.
    """
    clinical = Path(clinical)
    rows, (case_col, project_col) = _read_table(clinical, (_CLINICAL_CASE, _CLINICAL_PROJECT))
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
        records, (id_col, name_col) = _read_table(manifest, _MANIFEST_COLUMNS)
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
    _drop_missing(missing, "the manifest(s)", strict)
    return rows


# ----------------------------------------------------------------------------- command line


def _manifest_arg(value: str) -> tuple[str, str | None]:
    path, sep, project = value.partition("=")
    return path, (project or None) if sep else None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m slidemil.cohorts.builders", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cohort", required=True)

    c = sub.add_parser("camelyon16", help="Camelyon16 (normal/tumor, official train/test split)")
    c.add_argument("--slides", required=True,
                   help="folder with normal_NNN.tif, tumor_NNN.tif, test_NNN.tif (recursive)")
    c.add_argument("--reference", help="testing/reference.csv with the test labels")
    c.add_argument("--annotations", help="folder of lesion annotation XMLs <slide_id>.xml (recursive)")
    c.add_argument("--exclude", action="append", default=[], metavar="SLIDE_ID", help="leave a slide out (repeatable)")

    for name, help_ in (
        ("tcga", "any TCGA projects (give --classes)"),
        ("tcga_nsclc", "TCGA lung: LUAD vs LUSC"),
        ("tcga_rcc", "TCGA kidney: KIRC, KIRP, KICH"),
    ):
        t = sub.add_parser(name, help=help_)
        t.add_argument(
            "--manifest", required=True, action="append", type=_manifest_arg, metavar="FILE[=PROJECT]",
            help="GDC manifest (repeatable); =PROJECT labels all its slides (else from --clinical)",
        )
        t.add_argument("--slides", required=True,
                       help="gdc-client download folder (<id>/<filename>) or a flat folder")
        t.add_argument("--clinical", help="GDC clinical.tsv or sample sheet with case_submitter_id and project_id")
        t.add_argument("--include-frozen", action="store_true", help="also frozen sections (TS/BS/MS), not only DX")
        if name == "tcga":
            t.add_argument("--classes", required=True, help="comma-separated labels, e.g. LUAD,LUSC")

    for s in sub.choices.values():
        s.add_argument("--out", required=True, help="sample sheet to write (TSV)")
        s.add_argument("--strict", action="store_true", help="error, not warning, when a listed slide is missing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        if args.cohort == "camelyon16":
            rows = build_camelyon16(args.slides, args.reference, args.annotations, args.strict, args.exclude)
        else:
            classes = args.classes.split(",") if args.cohort == "tcga" else TCGA_COHORTS[args.cohort]
            rows = build_tcga(args.manifest, args.slides, classes, args.clinical,
                              args.include_frozen, args.strict)
        write_sheet(rows, args.out)
    except CohortError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "CAMELYON16_CLASSES",
    "CohortError",
    "SampleRow",
    "TCGA_COHORTS",
    "build_camelyon16",
    "build_tcga",
    "main",
    "parse_tcga_slide_name",
    "read_asap_annotation",
    "read_camelyon16_reference",
    "read_tcga_projects",
    "write_sheet",
]

if __name__ == "__main__":
    sys.exit(main())
