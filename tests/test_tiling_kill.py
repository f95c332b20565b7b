"""A tile job killed (SIGKILL) mid-write leaves no store; its rerun equals an uninterrupted run byte for byte."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from slidemil.cohorts.demo import write_pyramidal_tiff
from slidemil.files import temp_sibling
from slidemil.slides.tiling import TileParams, tile_slide
from slidemil.slides.tissue import TissueParams, mask_slide

PARAMS = {"target_mpp": 0.5, "tile_size": 16, "shard_tiles": 64}  # ~15k tiles in ~250 shards: ~1 s of writing


@pytest.fixture(scope="module")
def kill_slide(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A 4096 x 3072 px slide at 0.5 mpp, half of it textured "tissue", with its mask and mask QC."""
    d = tmp_path_factory.mktemp("kill")
    rng = np.random.default_rng(3)
    shade = rng.integers(-40, 40, (256, 256, 1))
    patch = np.clip(np.array([200, 120, 170]) + shade + rng.integers(-8, 8, (256, 256, 3)), 0, 255).astype(np.uint8)
    rgb = np.full((3072, 4096, 3), 240, np.uint8)
    yy, xx = np.mgrid[:3072, :4096]
    tissue = (yy - 1536) ** 2 / 1300**2 + (xx - 2048) ** 2 / 1700**2 < 1
    rgb[tissue] = np.tile(patch, (12, 16, 1))[tissue]
    write_pyramidal_tiff(rgb, d / "k.tiff", 0.5)
    mask_slide(d / "k.tiff", d / "m.png", d / "mqc.png", TissueParams())
    return d / "k.tiff", d / "m.png", d / "mqc.png"


def _cli(slide: Path, mask: Path, mask_qc: Path, out: Path, threads: int) -> list[str]:
    import json

    return [sys.executable, "-m", "slidemil", "tile", "--slide", str(slide), "--slide-id", "k", "--mask", str(mask),
            "--mask-qc", str(mask_qc), "--out", str(out), "--qc", str(out.with_suffix(".png")),
            "--params", json.dumps(PARAMS), "--threads", str(threads)]


def _files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def test_killed_tile_job_leaves_no_store_and_rerun_is_identical(kill_slide, tmp_path):
    slide, mask, mask_qc = kill_slide
    ref = tmp_path / "ref" / "k.zarr"
    attrs = tile_slide(slide, mask, ref, TileParams(**PARAMS), "k", progress=False)  # uninterrupted, 1 thread
    assert attrs["n_tiles"] > 5000

    out = tmp_path / "run" / "k.zarr"
    proc = subprocess.Popen(_cli(slide, mask, mask_qc, out, threads=2), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    tmp = temp_sibling(out, proc.pid)
    deadline = time.monotonic() + 60
    try:
        # kill once a few shards are on disk: mid-write, not before it started
        while not (tmp / "tiles" / "c").is_dir() or len(os.listdir(tmp / "tiles" / "c")) < 3:
            assert proc.poll() is None, "the tile job ended before it could be killed: " + proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no shard written within 60 s"
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed job must not leave a complete-looking store"
    assert tmp.exists() and len(os.listdir(tmp / "tiles" / "c")) < attrs["n_tiles"] / PARAMS["shard_tiles"]

    done = subprocess.run(_cli(slide, mask, mask_qc, out, threads=2), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.is_dir() and not list(out.parent.glob(".k.zarr.tmp-*")), "the rerun clears the dead job's temp dir"
    got, want = _files(out), _files(ref)
    assert got.keys() == want.keys()
    assert [k for k in want if got[k] != want[k]] == []  # every shard, index and zarr.json (attrs) byte for byte
