"""A crash leaves nothing half-trusted (issue 22): SIGKILL to the whole workflow (Snakemake and every job it
started) while an embed batch, or a pretraining job, is running; the rerun (the same command line) ends
with a benchmark.csv byte-identical to an uninterrupted run's (the shared `finished_run`, same config)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from test_workflow import ROOT, SNAKEMAKE, _tiny_config, snakemake

pytestmark = pytest.mark.e2e


def run_and_kill(workdir: Path, running: Callable[[Path], bool], timeout: float = 1200) -> str:
    """Start the workflow in a session of its own and SIGKILL the whole process group as soon as
    `running(workdir)` holds; returns the run's output so far."""
    log = workdir / "killed_run.log"
    cmd = [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if running(workdir):
                    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its jobs: a power cut, an OOM kill
                    proc.wait()
                    return log.read_text()
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    raise AssertionError(f"the workflow ended (or timed out) before the job to kill ran:\n{log.read_text()[-3000:]}")


def embedding(workdir: Path) -> bool:
    """An embed batch is writing a feature store (atomic_path's hidden temporary sibling exists)."""
    return any((workdir / "results" / "features").glob("*/.*.zarr.tmp-*"))


def pretraining(workdir: Path) -> bool:
    """A pretraining job has started training (its log has its first lines) and has not written encoder.pt."""
    logs = list((workdir / "logs" / "pretrain").rglob("*.log")) if (workdir / "logs" / "pretrain").exists() else []
    return any(p.stat().st_size > 0 for p in logs) and not list((workdir / "results" / "encoders").rglob("encoder.pt"))


@pytest.mark.parametrize("running", [embedding, pretraining], ids=["embed", "pretrain"])
def test_killed_run_reruns_to_the_same_benchmark(finished_run, tmp_path, running):
    workdir = tmp_path / "wf"
    workdir.mkdir()
    _tiny_config(workdir)  # finished_run's config
    run_and_kill(workdir, running)
    assert not (workdir / "results" / "benchmark.csv").exists()
    rerun = snakemake(workdir, check=False)
    if rerun.returncode != 0:  # Snakemake's lock files name no process: a killed run's stay behind
        assert "--unlock" in rerun.stdout + rerun.stderr, rerun.stderr[-3000:]  # ... and it says how to remove them
        snakemake(workdir, "--unlock")
        snakemake(workdir)  # incomplete outputs are redone (profiles/default: rerun-incomplete), never trusted
    assert (workdir / "results" / "benchmark.csv").read_bytes() == (finished_run / "results" / "benchmark.csv").read_bytes()
    leftovers = [p for p in (workdir / "results").rglob(".*.tmp-*")]
    assert not leftovers, f"a killed job's temporary files were left: {leftovers}"
