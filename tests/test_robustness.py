"""Bad input never stops a cohort: one-line errors, outputs flagged failed/empty, MIL skips them.

The broken files are made here (truncated and corrupt TIFFs, a text file named .svs, an empty
file, blank glass) or taken from ../shared/data (a slide without mpp, a malformed DICOM).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SHARED_DATA, SMALL, shared_slide
from slidemil.cohorts.demo import make_demo_slide, write_pyramidal_tiff
from slidemil.slides.store import open_tiles

# slide id -> (how the file is made, a word the one-line reason must contain)
BAD = {
    "truncated": "first 40% of a pyramidal TIFF",
    "truncsvs": "the real Aperio SVS of ../shared/data cut at 70% (first directory intact, the rest gone)",
    "corrupt": "pyramidal TIFF whose JPEG tiles are zeroed after 100 bytes",
    "textfile": "a text file named .svs",
    "emptyfile": "a file of 0 bytes",
    "nompp": "a real SVS without mpp, none in the sheet",
    "baddicom": "the malformed DICOM of ../shared/data",
}
REASON = {
    "truncated": r"truncated or damaged TIFF: the TIFF header is readable but .*re-copy the file",
    "truncsvs": r"truncated or damaged Aperio SVS: the TIFF header is readable but .*re-copy the file",
    "corrupt": r"truncated or corrupt",
    "textfile": r"not a slide format",
    "emptyfile": r"file is empty",
    "nompp": r"no microns-per-pixel.*mpp. column",
    "baddicom": r"Couldn't get image flavor.*truncated or corrupt",
}


def _corrupt_tiles(src: Path, dst: Path) -> None:
    """Copy a TIFF with the JPEG data of its tiles zeroed after 100 bytes (headers stay valid)."""
    import tifffile

    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tif:
        for page in tif.pages:
            for off, n in zip(page.dataoffsets, page.databytecounts):
                data[off + 100 : off + n] = bytes(n - 100)
    dst.write_bytes(bytes(data))


@pytest.fixture(scope="session")
def bad_slides(tmp_path_factory) -> dict[str, Path]:
    """slide id -> path of each broken input, plus `good` and `blank` (no tissue)."""
    d = tmp_path_factory.mktemp("bad_slides")
    good = d / "good.tiff"
    make_demo_slide("good", 1, 3, good, d / "good.geojson", SMALL)
    paths = {"good": good}
    paths["truncated"] = d / "truncated.tiff"
    paths["truncated"].write_bytes(good.read_bytes()[: int(good.stat().st_size * 0.4)])
    paths["corrupt"] = d / "corrupt.tiff"
    _corrupt_tiles(good, paths["corrupt"])
    paths["textfile"] = d / "textfile.svs"
    paths["textfile"].write_text("slide_id\tpath\nthis is not a slide\n")
    paths["emptyfile"] = d / "emptyfile.svs"
    paths["emptyfile"].write_bytes(b"")
    paths["blank"] = d / "blank.tiff"
    write_pyramidal_tiff(np.full((1024, 1536, 3), 244, np.uint8), paths["blank"], 0.5)
    for sid, name in SHARED_BAD.items():
        if (SHARED_DATA / name).exists():  # tests that need it skip (with the reason) when it is absent
            paths[sid] = d / name
            if sid == "truncsvs":
                data = (SHARED_DATA / name).read_bytes()
                paths[sid].write_bytes(data[: int(len(data) * 0.7)])
            else:
                paths[sid].symlink_to(SHARED_DATA / name)
    return paths


SHARED_BAD = {"nompp": "tcga-cr-7395-01a-01-ts1.svs", "baddicom": "malformed_dicom_TCGA-XK-AAJU.dcm",
              "truncsvs": "CMU-1-Small-Region.svs"}


def _need(paths: dict[str, Path], sid: str) -> Path:
    if sid not in paths:
        shared_slide(SHARED_BAD[sid])  # skips with the reason
    return paths[sid]


def slidemil(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slidemil", *map(str, args)], capture_output=True, text=True)


def _mask(path: Path, sid: str, out: Path, mode: str = "skip") -> subprocess.CompletedProcess:
    return slidemil("mask", "--slide", path, "--slide-id", sid, "--on-slide-error", mode,
                    "--out", out / f"masks/{sid}.png", "--qc", out / f"qc/mask/{sid}.png")


def _tile(path: Path, sid: str, out: Path, mode: str = "skip", params: str = '{"tile_size": 32}'):
    return slidemil("tile", "--slide", path, "--slide-id", sid, "--on-slide-error", mode, "--params", params,
                    "--mask", out / f"masks/{sid}.png", "--mask-qc", out / f"qc/mask/{sid}.png",
                    "--out", out / f"tiles/{sid}.zarr", "--qc", out / f"qc/tiles/{sid}.png")


def error_lines(stderr: str, level: str = "ERROR") -> list[str]:
    """Log lines of `level` (progress bars end with \\r, so split on it too)."""
    return [ln for ln in re.split(r"[\r\n]", stderr) if f" {level} " in ln]


@pytest.mark.parametrize("sid", list(BAD))
def test_bad_slide_gives_one_error_line_naming_slide_and_reason(bad_slides, tmp_path, sid):
    path = _need(bad_slides, sid)
    proc = _mask(path, sid, tmp_path, mode="fail")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert re.search(rf" ERROR {sid}: .*({REASON[sid]})", lines[0]), lines[0]
    assert str(path) in lines[0]  # the file, too, so the user knows what to fix


@pytest.mark.parametrize("sid", list(BAD))
def test_skip_mode_writes_valid_outputs_flagged_failed(bad_slides, tmp_path, sid):
    path = _need(bad_slides, sid)
    proc = _mask(path, sid, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(error_lines(proc.stderr)) == 1
    meta = json.loads((tmp_path / f"masks/{sid}.json").read_text())
    assert meta["status"] == "failed" and re.search(REASON[sid], meta["reason"])
    assert (tmp_path / f"masks/{sid}.png").stat().st_size > 0
    assert (tmp_path / f"qc/mask/{sid}.png").stat().st_size > 0
    proc = _tile(path, sid, tmp_path)
    assert proc.returncode == 0, proc.stderr
    g = open_tiles(tmp_path / f"tiles/{sid}.zarr")
    assert g.attrs["status"] == "failed" and g.attrs["reason"] == meta["reason"]
    assert g["tiles"].shape == (0, 32, 32, 3) and g["coords"].shape == (0, 2) and g["grid"].shape == (0, 2)
    assert (tmp_path / f"qc/tiles/{sid}.png").stat().st_size > 0
    assert not list((tmp_path / "tiles").glob("*.tmp-*"))


def test_decode_error_during_tiling_is_caught_too(bad_slides, tmp_path, monkeypatch, caplog):
    """The mask worked, then reading tiles raises a library decode error (as OpenSlide does on a
    truncated JPEG tile): one ERROR line; fail mode leaves no store, skip mode a failed one."""
    import openslide

    from slidemil import cli
    from slidemil.slides import tiling

    path = bad_slides["good"]
    assert _mask(path, "c0", tmp_path).returncode == 0

    def broken(*a, **k):
        raise openslide.OpenSlideError("Premature end of JPEG file")

    monkeypatch.setattr(tiling, "tile_slide", broken)
    argv = ["tile", "--slide", str(path), "--slide-id", "c0", "--params", '{"tile_size": 32}',
            "--mask", str(tmp_path / "masks/c0.png"), "--mask-qc", str(tmp_path / "qc/mask/c0.png"),
            "--out", str(tmp_path / "tiles/c0.zarr"), "--qc", str(tmp_path / "qc/tiles/c0.png")]
    with caplog.at_level(logging.INFO):
        assert cli.main([*argv, "--on-slide-error", "fail"]) == 1
    (line,) = [f"{r.levelname} {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert re.search(r"^ERROR c0: .*good.tiff: cannot decode the image data \(Premature end of JPEG file\)", line)
    assert "\n" not in line
    assert not (tmp_path / "tiles/c0.zarr").exists()  # fail mode: nothing that looks complete
    assert cli.main([*argv, "--on-slide-error", "skip"]) == 0
    g = open_tiles(tmp_path / "tiles/c0.zarr")
    assert g.attrs["status"] == "failed" and "Premature end of JPEG" in g.attrs["reason"] and g["tiles"].shape[0] == 0


# Runs mask + tile in this child and prints the peak memory above what the imports took (VmHWM -
# VmRSS before the stages), so the figure is the stages' own, whatever the interpreter costs.
_MEASURED_CHILD = """
import json, sys
def status(key):
    return next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith(key + ":")) * 1024
import imagecodecs, numpy, openslide, pyvips, scipy.ndimage, tqdm, zarr
from PIL import Image
import slidemil.slides.store, slidemil.slides.tiling, slidemil.slides.tissue
from slidemil import cli
base = status("VmRSS")
slide, out = sys.argv[1:3]
a = ["--slide", slide, "--slide-id", "plain", "--on-slide-error", "fail"]
rc = [cli.main(["mask", *a, "--out", out + "/m.png", "--qc", out + "/qc_m.png"]),
      cli.main(["tile", *a, "--params", sys.argv[3], "--mask", out + "/m.png", "--mask-qc", out + "/qc_m.png",
                "--out", out + "/t.zarr", "--qc", out + "/qc_t.png"])]
print(json.dumps({"rc": rc, "peak_mib": (status("VmHWM") - base) / 2**20}))
"""


def test_plain_striped_tiff_is_masked_and_tiled_with_bounded_memory(small_slide, tmp_path):
    """A plain striped LZW TIFF (no tiles, no pyramid; OpenSlide refuses it) of 4608 x 16384 px,
    216 MiB decoded, is masked and tiled by a process whose memory grows by less than 160 MiB, so
    it is never read whole; its tiles are the source's pixels (JPEG-close) at the right places."""
    import pyvips

    bound_mib = 160
    path = tmp_path / "plain.tif"
    level0 = pyvips.Image.new_from_file(str(small_slide[0]))  # 1536 x 1024 at 0.5 mpp, real texture
    level0.replicate(3, 16).tiffsave(str(path), compression="lzw", xres=2000.0, yres=2000.0, resunit="cm")
    source = pyvips.Image.new_from_file(str(path), access="random")
    assert (source.width, source.height, source.get("vips-loader")) == (4608, 16384, "tiffload")
    assert source.width * source.height * 3 / 2**20 > bound_mib  # whole, it would not fit the bound
    proc = subprocess.run([sys.executable, "-c", _MEASURED_CHILD, str(path), str(tmp_path),
                           '{"target_mpp": 0.5, "tile_size": 256}'], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == [0, 0], proc.stderr
    assert result["peak_mib"] < bound_mib, result
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["status"] == "ok" and meta["slide_mpp"] == 0.5 and meta["mpp_source"] == "metadata"
    g = open_tiles(tmp_path / "t.zarr")
    assert g.attrs["status"] == "ok" and g.attrs["level"] == 0 and g.attrs["slide_mpp"] == 0.5
    assert g.attrs["reader"] == "libvips"
    n = g["tiles"].shape[0]
    assert n > 300 and g["tiles"].shape[1:] == (256, 256, 3)  # about half of the 18 x 64 grid is tissue
    coords = g["coords"][:]
    for i in np.linspace(0, n - 1, 8).astype(int):
        x, y = (int(v) for v in coords[i])
        want = np.ndarray(buffer=source.crop(x, y, 256, 256).write_to_memory(), dtype=np.uint8, shape=(256, 256, 3))
        assert np.abs(g["tiles"][i].astype(int) - want).mean() < 4, (i, x, y)


def test_target_finer_than_scan_fails_the_slide_not_the_cohort(tmp_path):
    path = shared_slide("multiframe_camelyon_challenge_image.dcm")  # 28.97 mpp
    assert _mask(path, "dcm", tmp_path).returncode == 0
    proc = _tile(path, "dcm", tmp_path, params='{"tile_size": 32, "target_mpp": 1.0}')
    assert proc.returncode == 0, proc.stderr
    (line,) = error_lines(proc.stderr)
    assert re.search(r" ERROR dcm: .*finer than the scan", line)
    assert open_tiles(tmp_path / "tiles/dcm.zarr").attrs["status"] == "failed"


def test_sheet_mpp_rescues_a_slide_without_mpp(bad_slides, tmp_path):
    path = _need(bad_slides, "nompp")
    proc = slidemil("mask", "--slide", path, "--slide-id", "nompp", "--mpp", "0.25", "--on-slide-error", "fail",
                    "--out", tmp_path / "masks/nompp.png", "--qc", tmp_path / "qc/mask/nompp.png")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "masks/nompp.json").read_text())
    assert meta["status"] == "ok" and meta["mpp_source"] == "samples.tsv"


def test_no_tissue_gives_one_warning_and_an_empty_store_downstream_skips(bad_slides, tmp_path):
    proc = _mask(bad_slides["blank"], "blank", tmp_path, mode="fail")
    assert proc.returncode == 0, proc.stderr
    (line,) = error_lines(proc.stderr, "WARNING")
    assert "blank: no tissue found" in line
    assert json.loads((tmp_path / "masks/blank.json").read_text())["status"] == "empty"
    assert _tile(bad_slides["blank"], "blank", tmp_path, mode="fail").returncode == 0
    g = open_tiles(tmp_path / "tiles/blank.zarr")
    assert g.attrs["status"] == "empty" and g["tiles"].shape[0] == 0
    proc = slidemil("graph", "--tiles", tmp_path / "tiles/blank.zarr", "--radius", "1", "--out", tmp_path / "graphs/blank.npz")
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "graphs/blank.npz")["indices"].size == 0


def test_embed_passes_status_on_and_mil_skips_failed_and_empty_bags(tmp_path, caplog):
    from slidemil.config import EncoderSpec
    from slidemil.encoders.embed import embed_slide
    from slidemil.slides.failures import write_failed_store
    from slidemil.cohorts.folds import fold_table
    from slidemil.mil.run import run_fold
    from slidemil.slides.store import write_features

    write_failed_store(tmp_path / "tiles/broken.zarr", "broken", "broken.svs: file is empty", 32)
    spec = EncoderSpec(name="enc", depth=1, input_size=32)
    with caplog.at_level(logging.WARNING):
        assert embed_slide(tmp_path / "tiles/broken.zarr", tmp_path / "features/broken.zarr", spec, 0,
                           device="cpu", progress=False) == 0
    assert "broken: no tiles (tile store failed: broken.svs: file is empty)" in caplog.text
    feats = open_tiles(tmp_path / "features/broken.zarr")
    assert feats.attrs["status"] == "failed" and feats.attrs["reason"] == "broken.svs: file is empty"
    dim = feats["features"].shape[1]

    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        x = rng.standard_normal((20, dim)).astype(np.float32)
        grid = np.stack([np.arange(20) % 5, np.arange(20) // 5], 1)
        write_features(tmp_path / f"features/s{i}.zarr", x, grid * 64, grid, {"status": "ok"})
        rows.append({"slide_id": f"s{i}", "patient_id": f"p{i}", "label": ["normal", "tumour"][i % 2]})
    write_features(tmp_path / "features/blank.zarr", np.zeros((0, dim)), np.zeros((0, 2)), np.zeros((0, 2)),
                   {"status": "empty"})
    rows += [{"slide_id": "broken", "patient_id": "pb", "label": "tumour"},
             {"slide_id": "blank", "patient_id": "pe", "label": "normal"}]
    samples = pd.DataFrame(rows)
    samples.to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    fold_table(samples, n_folds=2, seed=0, val_fraction=0.25).to_csv(tmp_path / "folds.csv", index=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for fold in (0, 1):
            run_fold(tmp_path / "features", tmp_path / "folds.csv", tmp_path / "samples.tsv", fold, "mean",
                     {"epochs": 1, "hidden": 8}, tmp_path / f"mil{fold}", seed=0, classes=["normal", "tumour"])
    assert "slide broken skipped: it failed in preprocessing (broken.svs: file is empty)" in caplog.text
    assert "slide blank skipped: no tissue tiles" in caplog.text
    for fold in (0, 1):
        pred = pd.read_csv(tmp_path / f"mil{fold}/predictions.csv")
        assert not {"broken", "blank"} & set(pred["slide_id"])


def test_cohort_qc_table_and_plot_list_every_slide_with_status(bad_slides, tmp_path):
    bad_slides = {**bad_slides, "dicom": shared_slide("multiframe_camelyon_challenge_image.dcm")}
    for sid, key in (("ok1", "good"), ("blank", "blank"), ("textfile", "textfile"), ("c0", "dicom")):
        _mask(bad_slides[key], sid, tmp_path)  # the DICOM masks, then fails to tile (finer than the scan)
        _tile(bad_slides[key], sid, tmp_path, params='{"tile_size": 32, "target_mpp": 0.5}')
    stores = sorted((tmp_path / "tiles").glob("*.zarr"))
    pd.DataFrame({"slide_id": [s.stem for s in stores], "path": "x", "label": "normal",
                  "patient_id": "p"}).to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    proc = slidemil("qc", "--tiles-dir", tmp_path / "tiles", "--masks-dir", tmp_path / "masks",
                    "--samples", tmp_path / "samples.tsv", "--out", tmp_path / "qc/cohort.tsv", "--plot", tmp_path / "qc/cohort.png")
    assert proc.returncode == 0, proc.stderr
    qc = pd.read_csv(tmp_path / "qc/cohort.tsv", sep="\t", keep_default_na=False).set_index("slide_id")
    assert dict(qc["status"]) == {"ok1": "ok", "blank": "empty", "textfile": "failed", "c0": "failed"}
    assert qc.loc["ok1", "n_tiles"] > 0 and qc.loc["ok1", "reason"] == ""
    assert qc.loc["blank", "reason"] == "no tissue found" and "no_tissue_tiles" in qc.loc["blank", "flags"]
    assert "not a slide format" in qc.loc["textfile", "reason"]
    assert "finer than the scan" in qc.loc["c0", "reason"]
    assert qc.loc["c0", "tissue_area_mm2"] > 0  # the mask had worked: its area stays in the table
    warned = error_lines(proc.stderr, "WARNING")
    assert len(warned) == 3 and all(re.search(r"WARNING (blank|textfile|c0): (empty|failed) \(", w) for w in warned)
    assert (tmp_path / "qc/cohort.png").stat().st_size > 0


@pytest.mark.e2e
def test_cohort_with_bad_slides_completes(tmp_path):
    """8 good demo slides + 3 bad ones (truncated, no tissue, no mpp): the workflow finishes, the QC
    table names each failure, MIL skips them with a warning. (Each bad kind's CLI path is tested above.)"""
    from test_workflow import _tiny_config, snakemake

    import yaml

    nompp = shared_slide("tcga-cr-7395-01a-01-ts1.svs")
    _tiny_config(tmp_path, n_slides=8)
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    cfg["demo"]["enabled"] = False  # the good slides are made here: no demo jobs
    cfg["mil"]["models"] = ["mean"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    slides = tmp_path / "slides"
    slides.mkdir()
    rows = ["slide_id\tpath\tlabel\tpatient_id"]
    for i in range(8):
        make_demo_slide(f"t{i}", i % 2, i, slides / f"t{i}.tiff", slides / f"t{i}.geojson", SMALL)
        rows.append(f"t{i}\tslides/t{i}.tiff\t{'tumour' if i % 2 else 'normal'}\tP{i}")
    good = (slides / "t0.tiff").read_bytes()
    (slides / "trunc.tiff").write_bytes(good[: len(good) * 2 // 5])
    write_pyramidal_tiff(np.full((1024, 1536, 3), 244, np.uint8), slides / "blank.tiff", 0.5)
    (slides / "nompp.svs").symlink_to(nompp)
    for sid, name, label in (("trunc", "trunc.tiff", "tumour"), ("blank", "blank.tiff", "normal"),
                             ("nompp", "nompp.svs", "tumour")):
        rows.append(f"{sid}\tslides/{name}\t{label}\tP_{sid}")
    (tmp_path / "samples.tsv").write_text("\n".join(rows) + "\n")

    start = time.monotonic()
    snakemake(tmp_path)
    took = time.monotonic() - start
    assert (tmp_path / "results/benchmark.csv").stat().st_size > 0
    qc = pd.read_csv(tmp_path / "results/qc/cohort.tsv", sep="\t", keep_default_na=False).set_index("slide_id")
    assert len(qc) == 11
    assert (qc.loc[[f"t{i}" for i in range(8)], "status"] == "ok").all()
    assert dict(qc.loc[["trunc", "blank", "nompp"], "status"]) == {"trunc": "failed", "blank": "empty",
                                                                    "nompp": "failed"}
    assert "microns-per-pixel" in qc.loc["nompp", "reason"] and qc.loc["blank", "reason"] == "no tissue found"
    assert (tmp_path / "results/qc/cohort.png").stat().st_size > 0
    assert any("ERROR trunc: " in p.read_text() for p in (tmp_path / "logs/tile").glob("batch*.log"))
    qc_log = (tmp_path / "logs/qc_cohort/cohort.log").read_text()
    assert all(f"WARNING {s}: " in qc_log for s in ("trunc", "blank", "nompp"))
    # folds come from the sheet alone (fixing a slide moves no other); MIL leaves the bad ones out
    assert set(pd.read_csv(tmp_path / "results/folds.csv")["slide_id"]) == {*(f"t{i}" for i in range(8)),
                                                                          "trunc", "blank", "nompp"}
    mil_logs = "".join(p.read_text() for p in (tmp_path / "logs/mil").rglob("*.log"))
    assert all(f"slide {s} skipped" in mil_logs for s in ("trunc", "blank", "nompp"))
    predicted = set()
    for p in (tmp_path / "results/mil").rglob("predictions.csv"):
        predicted |= set(pd.read_csv(p)["slide_id"])
    assert predicted.isdisjoint({"trunc", "blank", "nompp"})
    # the HDF5 export is optional: not built by default; export_h5_all asks for one file per slide
    assert not (tmp_path / "results/export").exists()
    dry = snakemake(tmp_path, "-n", "export_h5_all").stdout
    assert re.search(r"export_h5\s+11\b", dry), dry[-2000:]
    snakemake(tmp_path, "results/export/t1.h5", "results/export/nompp.h5")
    import h5py

    for sid in ("t1", "nompp"):
        with h5py.File(tmp_path / f"results/export/{sid}.h5", "r") as h:
            assert h["coords"].shape == (qc.loc[sid, "n_tiles"], 2) and h["coords"].attrs["status"] == qc.loc[sid, "status"]
    print(f"e2e with bad slides: {took:.0f} s")
