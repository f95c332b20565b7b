"""The SLURM profile: its keys are valid for Snakemake + the SLURM plugin, and (with a running
SLURM, see .ci/slurm/start.sh) a throwaway workflow goes through sbatch, shows in sacct, and a
`resources: gpu=1` rule gets `gres/gpu` (a fake device: the job sees CUDA_VISIBLE_DEVICES but no
CUDA, so it must fall back to the CPU)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "slurm"

SNAKEFILE = '''
rule all:
    input: "b.txt", "gpu.txt"

rule a:
    output: "a.txt"
    log: "logs/a.log"
    shell: "echo a $SLURM_JOB_ID > {output} 2> {log}"

rule b:
    input: "a.txt"
    output: "b.txt"
    log: "logs/b.log"
    shell: "cat {input} > {output} && echo b $SLURM_JOB_ID >> {output} 2> {log}"

rule gpu:
    output: "gpu.txt"
    log: "logs/gpu.log"
    resources: gpu=1
    run:
        import os
        try:
            import torch
            device = "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            device = "cpu"
        with open(output[0], "w") as f:
            f.write(f"{os.environ.get('SLURM_JOB_ID')} {os.environ.get('CUDA_VISIBLE_DEVICES')} {device}\\n")
'''


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _snakemake(workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", str(PROFILE), *args],
        cwd=workdir, env=_env(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_profile_is_valid(tmp_path: Path) -> None:
    """Every key of the profile is a known option (a dry run rejects unknown ones); no SLURM needed."""
    yaml = pytest.importorskip("yaml")
    cfg = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert cfg["executor"] == "slurm"
    assert cfg["slurm-logdir"] == "logs/slurm"
    assert {"mem_mb", "runtime", "cpus_per_task"} <= set(cfg["default-resources"])
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    r = _snakemake(tmp_path, "--dry-run", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def require_slurm() -> None:
    """Skip without a running SLURM, except under CI (SLIDEMIL_SLURM=1), where that is a failure."""
    why = _slurm_up()
    if why is None:
        return
    message = f"no running SLURM ({why}); start one with .ci/slurm/start.sh"
    if os.environ.get("SLIDEMIL_SLURM") == "1":
        pytest.fail(message + " (SLIDEMIL_SLURM=1: the SLURM tests must run)")
    pytest.skip(message)


def _slurm_up() -> str | None:
    """None when sbatch works and sacct answers (slurmdbd), else why not."""
    for tool in ("sbatch", "scontrol", "sacct"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    try:
        # scontrol ping fails at once when slurmctld is down (sinfo retries for ~10 s)
        if subprocess.run(["scontrol", "ping"], capture_output=True, timeout=10).returncode != 0:
            return "slurmctld not answering"
        # Without slurmdbd, sacct fails and the plugin waits forever: do not even try.
        if subprocess.run(["sacct", "-n", "-X"], capture_output=True, timeout=10).returncode != 0:
            return "sacct not working (no slurmdbd)"
    except subprocess.TimeoutExpired:
        return "SLURM commands time out"
    return None


@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_profile_through_real_slurm(tmp_path: Path) -> None:
    require_slurm()
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    r = _snakemake(tmp_path, "--slurm-init-seconds-before-status-checks", "1")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out

    jobs = dict(re.findall(r"logs/slurm/rule_([^/]+)/(\d+)\.log", out))  # "(log: .../logs/slurm/rule_a/12.log)"
    assert set(jobs) == {"a", "b", "gpu"}, out
    for rule, jobid in jobs.items():
        assert (tmp_path / "logs/slurm" / f"rule_{rule}" / f"{jobid}.log").exists()  # kept on success
        sacct = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", jobid, "-o", "State,AllocTRES"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        state, tres = sacct.split("|", 1)
        assert state == "COMPLETED", (rule, sacct)
        assert ("gres/gpu=1" in tres) == (rule == "gpu"), (rule, sacct)

    jobid, visible, device = (tmp_path / "gpu.txt").read_text().split()
    assert jobid == jobs["gpu"]
    assert visible != "None"  # SLURM allocated a GPU ...
    import torch

    # ... and the job fell back to what this machine has: the CI node's GPU is a stub without CUDA
    assert device == ("cuda" if torch.cuda.is_available() else "cpu")
