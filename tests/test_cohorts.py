"""Sample-sheet builders on small fake inputs shaped like the real Camelyon16 and GDC files."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest

from slidemil.cohorts.__main__ import main
from slidemil.cohorts.annotations import read_asap_annotation
from slidemil.cohorts.camelyon16 import CAMELYON16_CLASSES, build_camelyon16
from slidemil.cohorts.sheet import CohortError
from slidemil.cohorts.tcga import TCGA_COHORTS, build_tcga, parse_tcga_slide_name

ASAP_XML = """<?xml version="1.0"?>
<ASAP_Annotations>
\t<Annotations>
\t\t<Annotation Name="_0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
\t\t\t<Coordinates>
\t\t\t\t<Coordinate Order="1" X="120.5" Y="80" />
\t\t\t\t<Coordinate Order="0" X="100" Y="80" />
\t\t\t\t<Coordinate Order="2" X="110" Y="95.25" />
\t\t\t</Coordinates>
\t\t</Annotation>
\t</Annotations>
\t<AnnotationGroups>
\t\t<Group Name="_0" PartOfGroup="None" Color="#FF0000"><Attributes /></Group>
\t</AnnotationGroups>
</ASAP_Annotations>
"""


def read_sheet(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"II*\x00")
    return path


# ----------------------------------------------------------------------------- Camelyon16


@pytest.fixture
def camelyon16(tmp_path: Path) -> Path:
    """CAMELYON16/ laid out as downloaded (training/normal, training/tumor, testing/images)."""
    root = tmp_path / "CAMELYON16"
    for name in ("normal_001", "normal_002"):
        touch(root / "training/normal" / f"{name}.tif")
    touch(root / "training/tumor/tumor_001.tif")
    touch(root / "training/tumor/tumor_002.tif")
    touch(root / "training/tumor/tumor_001_mask.tif")  # not a slide: ignored
    for name in ("test_001", "test_002"):
        touch(root / "testing/images" / f"{name}.tif")
    reference = "test_001,Tumor,Macro,Metastases\ntest_002,Normal\ntest_003,Normal\n"  # as the official file
    (root / "testing/reference.csv").write_text(reference)
    ann = root / "training/lesion_annotations"
    ann.mkdir(parents=True)
    (ann / "tumor_001.xml").write_text(ASAP_XML)
    (root / "testing/lesion_annotations").mkdir(parents=True)
    (root / "testing/lesion_annotations/test_001.xml").write_text(ASAP_XML)
    return root


def test_camelyon16_sheet(camelyon16: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "samples.tsv"
    with caplog.at_level(logging.WARNING, logger="slidemil.cohorts"):
        rc = main(
            [
                "camelyon16",
                "--slides", str(camelyon16),
                "--reference", str(camelyon16 / "testing/reference.csv"),
                "--annotations", str(camelyon16),  # searched recursively
                "--out", str(out),
            ]
        )  # fmt: skip
    assert rc == 0
    rows = read_sheet(out)
    assert list(rows[0]) == ["slide_id", "path", "label", "patient_id", "split", "annotation"]
    by_id = {r["slide_id"]: r for r in rows}
    assert sorted(by_id) == ["normal_001", "normal_002", "test_001", "test_002", "tumor_001", "tumor_002"]
    assert {k: (r["label"], r["split"]) for k, r in by_id.items()} == {
        "normal_001": ("normal", "train"),
        "normal_002": ("normal", "train"),
        "tumor_001": ("tumor", "train"),
        "tumor_002": ("tumor", "train"),
        "test_001": ("tumor", "test"),
        "test_002": ("normal", "test"),
    }
    assert all(r["patient_id"] == r["slide_id"] for r in rows)
    assert Path(by_id["test_001"]["path"]) == (camelyon16 / "testing/images/test_001.tif").resolve()
    assert by_id["tumor_001"]["annotation"].endswith("tumor_001.xml")
    assert by_id["test_001"]["annotation"].endswith("testing/lesion_annotations/test_001.xml")
    assert by_id["tumor_002"]["annotation"] == ""
    # test_003 is in reference.csv but not on disk; tumor_002 has no annotation
    assert "dropped 1 slide(s)" in caplog.text and "test_003" in caplog.text
    assert "1 tumor slide(s) have no lesion annotation" in caplog.text


def test_camelyon16_strict_missing_slide(camelyon16: Path) -> None:
    with pytest.raises(CohortError, match="test_003.*absent on disk"):
        build_camelyon16(camelyon16, camelyon16 / "testing/reference.csv", strict=True)


def test_camelyon16_without_annotations_or_tests(tmp_path: Path) -> None:
    touch(tmp_path / "s/normal_001.tif")
    touch(tmp_path / "s/tumor_001.tif")
    rows = build_camelyon16(tmp_path / "s")
    assert [(r.slide_id, r.label, r.split, r.annotation) for r in rows] == [
        ("normal_001", "normal", "train", None),
        ("tumor_001", "tumor", "train", None),
    ]


def test_camelyon16_errors(camelyon16: Path, tmp_path: Path) -> None:
    with pytest.raises(CohortError, match="test slides need labels"):
        build_camelyon16(camelyon16)
    bad = tmp_path / "bad.csv"
    bad.write_text("test_001,Tumor,Macro,Metastases\ntest_002,Benign\n")
    with pytest.raises(CohortError, match=r"bad.csv:2: unknown label 'Benign'"):
        build_camelyon16(camelyon16, bad)
    short = tmp_path / "short.csv"
    short.write_text("test_001,Tumor\n")
    with pytest.raises(CohortError, match="test_002.tif: no label for test_002"):
        build_camelyon16(camelyon16, short)
    # an excluded slide needs no label
    rows = build_camelyon16(camelyon16, short, exclude=["test_002"])
    assert "test_002" not in {r.slide_id for r in rows}


def test_camelyon16_broken_annotation(camelyon16: Path) -> None:
    (camelyon16 / "training/lesion_annotations/tumor_002.xml").write_text("<ASAP_Annotations><Annotations>")
    with pytest.raises(CohortError, match="tumor_002.xml: not valid XML"):
        build_camelyon16(camelyon16, camelyon16 / "testing/reference.csv", camelyon16 / "training")


def test_read_asap_annotation(tmp_path: Path) -> None:
    p = tmp_path / "tumor_001.xml"
    p.write_text(ASAP_XML)
    [(name, group, xy)] = read_asap_annotation(p)
    assert (name, group) == ("_0", "_0")
    assert xy == [(100.0, 80.0), (120.5, 80.0), (110.0, 95.25)]  # sorted by Order


# ----------------------------------------------------------------------------- TCGA

UUIDS = [f"{i:08x}-4b4a-4b9f-a8ad-5dbd7bd9ac8d" for i in range(10)]


def write_manifest(path: Path, filenames: list[str]) -> list[str]:
    """A GDC manifest; returns the file ids (one per file name)."""
    ids = [f"{i:08d}-1111-2222-3333-444444444444" for i in range(len(filenames))]
    lines = ["id\tfilename\tmd5\tsize\tstate"]
    lines += [f"{i}\t{f}\t{'0' * 32}\t123\treleased" for i, f in zip(ids, filenames)]
    path.write_text("\n".join(lines) + "\n")
    return ids


NSCLC_FILES = [
    f"TCGA-05-4244-01Z-00-DX1.{UUIDS[0]}.svs",  # LUAD, diagnostic
    f"TCGA-05-4244-01A-01-TS1.{UUIDS[1]}.svs",  # LUAD, frozen
    f"TCGA-18-3406-01Z-00-DX1.{UUIDS[2]}.svs",  # LUSC, diagnostic
    f"TCGA-18-3406-01Z-00-DX2.{UUIDS[3]}.svs",  # LUSC, second diagnostic slide, same patient
    f"TCGA-18-3406-11A-01-BS1.{UUIDS[4]}.svs",  # LUSC, normal tissue, frozen: never a tumour label
]


@pytest.fixture
def nsclc(tmp_path: Path) -> dict[str, Path]:
    manifest = tmp_path / "gdc_manifest.txt"
    ids = write_manifest(manifest, NSCLC_FILES)
    slides = tmp_path / "slides"
    for i, f in zip(ids, NSCLC_FILES):  # gdc-client layout: <id>/<filename>
        touch(slides / i / f)
    clinical = tmp_path / "clinical.tsv"
    clinical.write_text(
        "case_id\tcase_submitter_id\tproject_id\tage_at_index\ttreatment_type\n"
        "aaaa\tTCGA-05-4244\tTCGA-LUAD\t70\tRadiation Therapy\n"
        "aaaa\tTCGA-05-4244\tTCGA-LUAD\t70\tPharmaceutical Therapy\n"  # GDC repeats cases per treatment
        "bbbb\tTCGA-18-3406\tTCGA-LUSC\t'--\t'--\n"
    )
    return {"manifest": manifest, "slides": slides, "clinical": clinical}


def test_parse_tcga_slide_name() -> None:
    b = parse_tcga_slide_name(f"TCGA-05-4244-01Z-00-DX1.{UUIDS[0]}.svs")
    assert b is not None and (b.patient_id, b.sample_type, b.slide_type) == ("TCGA-05-4244", 1, "DX")
    b = parse_tcga_slide_name("TCGA-A3-3307-11A-01-BS1.x.svs")
    assert b is not None and (b.patient_id, b.sample_type, b.slide_type) == ("TCGA-A3-3307", 11, "BS")
    assert parse_tcga_slide_name("slide_1.svs") is None


def test_tcga_nsclc_sheet(nsclc: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "samples.tsv"
    args = ["--manifest", str(nsclc["manifest"]), "--clinical", str(nsclc["clinical"])]
    assert main(["tcga_nsclc", *args, "--slides", str(nsclc["slides"]), "--out", str(out)]) == 0
    rows = read_sheet(out)
    assert list(rows[0]) == ["slide_id", "path", "label", "patient_id"]  # no split: cross-validation
    assert [(r["slide_id"], r["label"], r["patient_id"]) for r in rows] == [
        (f"TCGA-05-4244-01Z-00-DX1.{UUIDS[0]}", "LUAD", "TCGA-05-4244"),
        (f"TCGA-18-3406-01Z-00-DX1.{UUIDS[2]}", "LUSC", "TCGA-18-3406"),
        (f"TCGA-18-3406-01Z-00-DX2.{UUIDS[3]}", "LUSC", "TCGA-18-3406"),
    ]
    assert all(Path(r["path"]).parent.parent == nsclc["slides"].resolve() for r in rows)  # <id>/<filename>

    # frozen sections on request; the normal-tissue slide is still left out
    rows = build_tcga([(nsclc["manifest"], None)], nsclc["slides"], ["LUAD", "LUSC"], nsclc["clinical"],
                      include_frozen=True)
    assert sorted(r.slide_id[:23] for r in rows) == [
        "TCGA-05-4244-01A-01-TS1",
        "TCGA-05-4244-01Z-00-DX1",
        "TCGA-18-3406-01Z-00-DX1",
        "TCGA-18-3406-01Z-00-DX2",
    ]


def test_tcga_rcc_flat_layout_and_manifest_projects(tmp_path: Path) -> None:
    """One manifest per project (=PROJECT), slides in one flat folder, no clinical table."""
    slides = tmp_path / "flat"
    manifests = []
    for project, patient in (("KIRC", "TCGA-A3-3307"), ("KIRP", "TCGA-2Z-A9J1"), ("KICH", "TCGA-KL-8323")):
        name = f"{patient}-01Z-00-DX1.{UUIDS[0]}.svs"
        write_manifest(tmp_path / f"{project}.txt", [name])
        touch(slides / name)
        manifests.append(f"{tmp_path / project}.txt=TCGA-{project}")
    out = tmp_path / "rcc.tsv"
    argv = ["tcga_rcc", *sum((["--manifest", m] for m in manifests), [])]
    argv += ["--slides", str(slides), "--out", str(out)]
    assert main(argv) == 0
    assert {(r["patient_id"], r["label"]) for r in read_sheet(out)} == {
        ("TCGA-A3-3307", "KIRC"),
        ("TCGA-2Z-A9J1", "KIRP"),
        ("TCGA-KL-8323", "KICH"),
    }


def test_tcga_gdc_sample_sheet_as_clinical(nsclc: dict[str, Path], tmp_path: Path) -> None:
    """The GDC cart's sample sheet ('Case ID', 'Project ID') works as the clinical table."""
    sheet = tmp_path / "gdc_sample_sheet.tsv"
    sheet.write_text(
        "File ID\tFile Name\tData Category\tData Type\tProject ID\tCase ID\tSample ID\tSample Type\n"
        f"x\t{NSCLC_FILES[0]}\tBiospecimen\tSlide Image\tTCGA-LUAD\tTCGA-05-4244\tTCGA-05-4244-01Z\tPrimary Tumor\n"
        f"y\t{NSCLC_FILES[2]}\tBiospecimen\tSlide Image\tTCGA-LUSC\tTCGA-18-3406\tTCGA-18-3406-01Z\tPrimary Tumor\n"
    )
    rows = build_tcga([(nsclc["manifest"], None)], nsclc["slides"], ["LUAD", "LUSC"], sheet)
    assert [r.label for r in rows] == ["LUAD", "LUSC", "LUSC"]


def test_tcga_missing_slide_warns_or_fails(nsclc: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    victim = next(nsclc["slides"].rglob("TCGA-18-3406-01Z-00-DX2*"))
    victim.unlink()
    with caplog.at_level(logging.WARNING, logger="slidemil.cohorts"):
        rows = build_tcga([(nsclc["manifest"], None)], nsclc["slides"], ["LUAD", "LUSC"], nsclc["clinical"])
    assert len(rows) == 2
    assert "dropped 1 slide(s)" in caplog.text
    with pytest.raises(CohortError, match="DX2.*absent on disk"):
        build_tcga([(nsclc["manifest"], None)], nsclc["slides"], ["LUAD", "LUSC"], nsclc["clinical"],
                   strict=True)


def test_tcga_errors(nsclc: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m, s, c = nsclc["manifest"], nsclc["slides"], nsclc["clinical"]
    # missing column
    bad = tmp_path / "bad_manifest.txt"
    bad.write_text("uuid\tfilename\n1\tx.svs\n")
    with pytest.raises(CohortError, match=r"bad_manifest.txt: missing column 'id'"):
        build_tcga([(bad, "LUAD")], s, ["LUAD", "LUSC"])
    no_project = tmp_path / "clin.csv"
    no_project.write_text("case_submitter_id,disease\nTCGA-05-4244,LUAD\n")
    with pytest.raises(CohortError, match=r"clin.csv: missing column 'project_id'"):
        build_tcga([(m, None)], s, ["LUAD", "LUSC"], no_project)
    # unknown label: a BRCA case in the NSCLC clinical table
    brca = tmp_path / "brca.tsv"
    brca.write_text("case_submitter_id\tproject_id\nTCGA-05-4244\tTCGA-BRCA\nTCGA-18-3406\tTCGA-LUSC\n")
    with pytest.raises(CohortError, match=r"gdc_manifest.txt:2: .*unknown label 'BRCA'"):
        build_tcga([(m, None)], s, ["LUAD", "LUSC"], brca)
    with pytest.raises(CohortError, match=r"project 'TCGA-KIRC' is not one of LUAD, LUSC"):
        build_tcga([(m, "TCGA-KIRC")], s, ["LUAD", "LUSC"])
    # a case absent from the clinical table
    partial = tmp_path / "partial.tsv"
    partial.write_text("case_submitter_id\tproject_id\nTCGA-05-4244\tTCGA-LUAD\n")
    with pytest.raises(CohortError, match=r"gdc_manifest.txt:4: case TCGA-18-3406 is not in"):
        build_tcga([(m, None)], s, ["LUAD", "LUSC"], partial)
    # not a TCGA name
    odd = tmp_path / "odd.txt"
    write_manifest(odd, ["slide_1.svs"])
    with pytest.raises(CohortError, match=r"odd.txt:2: 'slide_1.svs' is not a TCGA slide name"):
        build_tcga([(odd, "LUAD")], s, ["LUAD", "LUSC"])
    # no project source at all
    with pytest.raises(CohortError, match="give --clinical or --manifest"):
        build_tcga([(m, None)], s, ["LUAD", "LUSC"])
    # the command line prints one line and exits 2
    argv = ["tcga_nsclc", "--manifest", str(bad), "--slides", str(s), "--clinical", str(c)]
    assert main([*argv, "--out", str(tmp_path / "o.tsv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "bad_manifest.txt" in err[0]
    assert not (tmp_path / "o.tsv").exists()


# ----------------------------------------------------------------------------- cohort configs

ROOT = Path(__file__).resolve().parents[1]


def _merge(base: dict, over: dict) -> dict:
    """Snakemake's --configfile merge: nested dicts merge, everything else (lists too) replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.mark.parametrize("cohort", ["camelyon16", "tcga_nsclc", "tcga_rcc"])
def test_cohort_config(cohort: str) -> None:
    """Each cohort config, merged over config/config.yaml, passes the config schema, and its
    header's builder command writes the sheet that `samples` names."""
    yaml = pytest.importorskip("yaml")
    jsonschema = pytest.importorskip("jsonschema")
    path = ROOT / "config/cohorts" / f"{cohort}.yaml"
    text = path.read_text()
    cfg = yaml.safe_load(text)
    base, schema = ROOT / "config/config.yaml", ROOT / "workflow/schemas/config.schema.yaml"
    if base.exists() and schema.exists():
        jsonschema.validate(_merge(yaml.safe_load(base.read_text()), cfg), yaml.safe_load(schema.read_text()))
    assert cfg["demo"]["enabled"] is False
    assert cfg["tile"]["target_mpp"] == 0.5
    assert cfg["evaluate"]["use_official_split"] is (cohort == "camelyon16")
    assert f"python -m slidemil.cohorts {cohort} " in text
    assert f"--out {cfg['samples']}" in text
    expected = {"camelyon16": CAMELYON16_CLASSES, **TCGA_COHORTS}[cohort]
    assert cfg["classes"] == list(expected)  # the labels the builder writes


def test_python_m_slidemil_cohorts_offers_every_registered_builder() -> None:
    import subprocess
    import sys

    from slidemil.cohorts.registry import BUILDERS

    out = subprocess.run([sys.executable, "-m", "slidemil.cohorts", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert set(BUILDERS) == {"camelyon16", "tcga", "tcga_nsclc", "tcga_rcc"}
    assert all(name in out for name in BUILDERS)
