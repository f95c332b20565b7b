"""The demo DAG through a real SLURM (sbatch + sacct), compared with a local run of the same config.

Needs a running single-node SLURM with accounting (`bash .ci/slurm/start.sh`, as .ci/run does);
skipped otherwise, with the reason. The fake GPU of that SLURM has no CUDA behind it, so the GPU
rules (embed, mil) get `gres/gpu` and fall back to the CPU, which is what this test relies on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slidemil.slides.store import open_tiles
from test_slurm_setup import _env, require_slurm
from test_workflow import ROOT, _tiny_config, snakemake

N_SLIDES = 6


@pytest.mark.slurm
@pytest.mark.timeout(1200)
def test_demo_dag_through_slurm_matches_local_run(tmp_path):
    require_slurm()
    local, cluster = tmp_path / "local", tmp_path / "slurm"
    for d in (local, cluster):
        d.mkdir()
        # one seed, no pretraining: per-slide jobs dominate, which is what the grouping check is about
        _tiny_config(d, n_slides=N_SLIDES, seeds=[0], pretrain={})
    snakemake(local)

    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(cluster),
           "--configfile", str(cluster / "config.yaml"), "--profile", str(ROOT / "profiles" / "slurm"),
           "--slurm-init-seconds-before-status-checks", "1", "--jobs", "4",
           "--default-resources", "mem_mb=1500", "runtime=30", "cpus_per_task=1"]
    proc = subprocess.run(cmd, cwd=cluster, env=_env(), capture_output=True, text=True, timeout=1100)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]

    # every job went through sbatch and finished COMPLETED according to sacct
    rows = subprocess.run(["sacct", "-n", "-X", "-P", "-S", "now-1hour", "-o", "JobID,State,AllocTRES,WorkDir"],
                          capture_output=True, text=True, check=True).stdout.strip().splitlines()
    jobs = [r.split("|") for r in rows if r.split("|")[-1].rstrip("/") == str(cluster)]
    assert jobs, f"sacct shows no job that ran in {cluster}:\n" + "\n".join(rows[-20:])
    assert all(state == "COMPLETED" for _, state, _, _ in jobs), jobs
    assert any("gres/gpu=1" in tres for _, _, tres, _ in jobs), jobs  # the GPU rules asked for a GPU
    assert len(jobs) < N_SLIDES * 4  # per-slide jobs were grouped, not one sbatch each

    # same results as the local run: same tiles, same features, same benchmark
    for slide in (f"t{i}" for i in range(N_SLIDES)):
        a, b = (open_tiles(d / f"results/tiles/{slide}.zarr") for d in (local, cluster))
        np.testing.assert_array_equal(a["coords"][:], b["coords"][:])
        np.testing.assert_array_equal(a["tiles"][:], b["tiles"][:])
    bench_local = pd.read_csv(local / "results" / "benchmark.csv")
    bench_slurm = pd.read_csv(cluster / "results" / "benchmark.csv")
    pd.testing.assert_frame_equal(bench_local, bench_slurm, atol=1e-6)
