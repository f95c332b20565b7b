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


# ----------------------------------------------------------------------------- one name per rule family

FAMILY_SETTINGS = {  # what a cluster's profile would set, one name per family (profiles/slurm documents them)
    "set-resources": {"tile": {"slurm_partition": "p_tile"}, "graph": {"slurm_partition": "p_graph"},
                      "embed": {"slurm_partition": "p_embed", "mem_mb": 16000},
                      "embed_fold": {"mem_mb": 7777},  # fold-trained encoders: after embed's entry
                      "embed_b1_resnet18_rand": {"slurm_partition": "p_own"},  # a batch's own entry wins
                      "pretrain": {"slurm_partition": "p_pretrain"}},
    "set-threads": {"embed": 2},  # the demo's embed.threads is 1 (and a dry run caps threads at --cores 2)
}


def _family(rule: str) -> str:
    """The documented name a planned rule answers to: the batch rules' family, else the rule itself."""
    if m := re.fullmatch(r"(tile|graph)_b\d+", rule):
        return m[1]
    if re.fullmatch(r"embed_b\d+_\w+_fold\d+", rule):
        return "embed_fold"
    return "embed" if re.fullmatch(r"embed_b\d+_\w+", rule) else rule


def _planned_jobs(out: str) -> dict[str, list[str]]:
    """rule -> its job blocks' lines, from a dry run's listing."""
    jobs: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=\s*(?:local)?rule \w+:)", out):  # indented inside a group job
        if m := re.match(r"\s*(?:local)?rule (\w+):", block):
            jobs.setdefault(m[1], []).extend(block.splitlines())
    return jobs


def _example_set_resources() -> dict:
    """The profile's commented `set-resources:` example, uncommented."""
    yaml = pytest.importorskip("yaml")
    lines = (PROFILE / "config.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# set-resources:"))
    block = ["set-resources:"]
    for line in lines[start + 1:]:
        if not line.startswith("#   "):
            break
        block.append(line[1:])
    return yaml.safe_load("\n".join(block))["set-resources"]


@pytest.mark.parametrize("per_job", [16, 1])  # embed.slides_per_job 1: rules embed and embed_fold, no batches
def test_one_name_sets_the_resources_of_every_job_of_a_rule_family(tmp_path: Path, per_job: int) -> None:
    """Snakemake's set-resources/set-threads keys are rule names, and tiles, graphs and features are one
    rule per batch (tile_b3, embed_b0_<encoder>[_fold<k>]): the family's name must still reach them all.
    A dry run of the demo, with a mining run for fold-trained encoders, through the SLURM profile."""
    yaml = pytest.importorskip("yaml")
    profile = tmp_path / "profile"
    profile.mkdir()
    cfg = yaml.safe_load((PROFILE / "config.yaml").read_text())
    (profile / "config.yaml").write_text(yaml.safe_dump({**cfg, **FAMILY_SETTINGS}))
    overlay = tmp_path / "hnm.yaml"
    overlay.write_text(f"samples: {ROOT / 'config/samples_demo.tsv'}\nembed: {{slides_per_job: {per_job}}}\n"
                       "hnm:\n  simclr-hnm: {enabled: true, rounds: 1}\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    r = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--profile",
                        str(profile), "--directory", str(workdir), "--configfile", str(ROOT / "config/config.yaml"),
                        str(overlay), "-n"], cwd=workdir, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    jobs = _planned_jobs(r.stdout)
    families = {_family(rule) for rule in jobs}
    assert {"tile", "graph", "embed", "embed_fold", "pretrain"} <= families, sorted(jobs)
    for key in _example_set_resources():  # the profile's example names rules and families that exist
        assert key in families, f"profiles/slurm's set-resources example names {key!r}, which is no rule or family"

    settings = FAMILY_SETTINGS["set-resources"]
    for rule, lines in jobs.items():
        family = _family(rule)
        want = {**(settings["embed"] if family == "embed_fold" else {}), **settings.get(family, {}),
                **settings.get(rule, {})}
        resources = next(line for line in lines if line.strip().startswith("resources:"))
        for key, value in want.items():
            assert f"{key}={value}" in resources, f"{rule} ({family}): {key}={value} not in {resources.strip()}"
        if family.startswith("embed"):
            assert any(line.strip() == "threads: 2" for line in lines), f"{rule}: set-threads embed=2 ignored"


def test_a_family_entry_is_lent_to_one_batch_rule_at_a_time() -> None:
    """Each cluster job gets the tables on its command line: they must not grow by an entry per batch."""
    from slidemil.plan.jobs import FamilySettings

    def merged(entries: list) -> dict:
        return {k: v for entry in entries for k, v in entry.items()}

    resources = {"embed": {"partition": "gpu", "mem_mb": 16000}, "embed_fold": {"mem_mb": 8000},
                 "embed_b1_x": {"partition": "own"}}
    own = dict(resources)
    settings = FamilySettings([(resources, merged)])
    assert settings.lend("embed_b0_x", ["embed"]) == "embed_b0_x"
    assert resources["embed_b0_x"] == {"partition": "gpu", "mem_mb": 16000}
    settings.lend("embed_b1_x", ["embed"])
    assert "embed_b0_x" not in resources and resources["embed_b1_x"] == {"partition": "own", "mem_mb": 16000}
    settings.lend("embed_b0_x_fold1", ["embed", "embed_fold"])
    assert resources["embed_b0_x_fold1"] == {"partition": "gpu", "mem_mb": 8000}
    assert resources["embed_b1_x"] == {"partition": "own"}  # its own entry, given back
    settings.lend("tile_b0", ["tile"])
    assert resources == own
