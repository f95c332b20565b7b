"""Shared fixtures: tiny synthetic slides (made here, seeded) and the real scans in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slidemil.cohorts.demo import DemoSlideSpec, make_demo_slide, render_slide, write_pyramidal_tiff

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SMALL = DemoSlideSpec(width=1536, height=1024, mpp=0.5)


def shared_slide(name: str) -> Path:
    """A real scan from ../shared/data; skips (with the reason) when the folder is not beside the repo."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real slide fixture {path} not found (../shared/data must sit beside the repository)")
    return path


@pytest.fixture(scope="session")
def small_slide(tmp_path_factory) -> tuple[Path, Path]:
    """A positive 1536 x 1024 px demo slide at 0.5 mpp and its tumour GeoJSON."""
    d = tmp_path_factory.mktemp("small_slide")
    slide, ann = d / "s.tiff", d / "s.geojson"
    make_demo_slide("s", 1, 0, slide, ann, SMALL)
    return slide, ann


@pytest.fixture(scope="session")
def inked_slide(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A demo slide with blue, green and black pen strokes drawn over tissue and glass.

    Returns the slide and a boolean [H, W] map of where ink was drawn (level 0).
    """
    rgb, _, _ = render_slide(7, False, SMALL)
    ink = np.zeros(rgb.shape[:2], bool)
    h, w = ink.shape
    for i, colour in enumerate([(30, 60, 200), (40, 150, 60), (20, 20, 20)]):
        y = int(h * (0.25 + 0.25 * i))
        ink[y : y + 40, w // 8 : 7 * w // 8] = True
        rgb[y : y + 40, w // 8 : 7 * w // 8] = colour
    path = tmp_path_factory.mktemp("inked") / "inked.tiff"
    write_pyramidal_tiff(rgb, path, SMALL.mpp)
    return path, ink


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A finished tiny workflow run (8 slides, 2 folds, 2 seeds), shared by the e2e and report tests."""
    from test_workflow import _tiny_config, snakemake

    workdir = tmp_path_factory.mktemp("wf")
    _tiny_config(workdir)
    snakemake(workdir)
    return workdir


@pytest.fixture
def one_torch_thread():
    """Tiny matmuls: one thread is faster and immune to other processes' load."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
