"""Configs that hold together: the defaults load from the workflow wherever it runs, a cohort config
runs what it says and nothing of the demo's."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
COHORTS = sorted(p.stem for p in (ROOT / "config/cohorts").glob("*.yaml"))


def dry_run(workdir: Path, *args: str, cwd: Path = ROOT) -> str:
    """A dry run's output (the shell commands printed); fails the test with Snakemake's last lines."""
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "-n", "--printshellcmds", *args],
                          capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, f"dry run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def planned(out: str) -> set[str]:
    return set(re.findall(r"^rule (\w+):", out, re.MULTILINE))


@pytest.mark.parametrize("cwd", ["repo", "workdir"])
def test_the_demo_plans_from_any_working_directory(tmp_path, cwd):
    """`snakemake --directory elsewhere` with no --configfile: config/config.yaml and its sample sheet
    are the workflow's, found from the Snakefile, not from the working directory."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    rules = planned(dry_run(workdir, cwd=ROOT if cwd == "repo" else workdir))
    assert {"demo_slide", "pretrain", "mil", "evaluate", "probe_table"} <= rules
    assert not (workdir / "config").exists()


def test_a_sheet_in_the_working_directory_comes_first(tmp_path):
    """The demo config's relative `samples` is the working directory's file when there is one."""
    from slidemil.plan.workdir import workflow_file

    (tmp_path / "config").mkdir()
    (tmp_path / "config/samples_demo.tsv").write_text("x")
    assert workflow_file("config/samples_demo.tsv", ROOT, tmp_path) == "config/samples_demo.tsv"
    assert workflow_file("config/samples_demo.tsv", ROOT, tmp_path / "config") == str(ROOT / "config/samples_demo.tsv")
    assert workflow_file("/abs/s.tsv", ROOT, tmp_path) == "/abs/s.tsv"
    assert workflow_file("absent.tsv", ROOT, tmp_path) == "absent.tsv"  # the sheet check names it


def _cohort_workdir(tmp_path: Path, cfg: dict) -> Path:
    """A working directory like the repository's (config/config.yaml there, as when Snakemake runs in a
    clone) with a four-slides-per-class sheet for the cohort and its weights files."""
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config/config.yaml", tmp_path / "config/config.yaml")
    rows = ["slide_id\tpath\tlabel\tpatient_id\tsplit"]
    for i, label in enumerate(cfg["classes"] * 4):
        (tmp_path / f"s{i}.svs").write_bytes(b"")
        rows.append(f"s{i}\ts{i}.svs\t{label}\tP{i}\t{'test' if i % 4 == 3 else 'train'}")
    (tmp_path / "samples.tsv").write_text("\n".join(rows) + "\n")
    for entry in cfg["encoders"]:
        if entry.get("weights"):
            (tmp_path / entry["weights"]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / entry["weights"]).write_bytes(b"")
    return tmp_path


def _json_args(out: str, command: str, flag: str) -> list:
    """The JSON value of `flag` in each printed `python -m slidemil {command}` line."""
    values = []
    for line in out.splitlines():
        if f"python -m slidemil {command} " in line:
            words = shlex.split(line[line.index("python -m slidemil"):].split(" 2> ")[0])
            values.append(json.loads(words[words.index(flag) + 1]))
    assert values, f"no `{command} {flag}` in the dry run"
    return values


@pytest.mark.parametrize("cohort", COHORTS)
def test_a_cohort_config_runs_what_it_says_and_nothing_of_the_demos(tmp_path, cohort):
    """Merged as Snakemake merges it: no demo pretraining (64 px, 4 epochs), mining run, encoder or MIL
    run that the cohort config does not name itself."""
    path = ROOT / "config/cohorts" / f"{cohort}.yaml"
    cfg = yaml.safe_load(path.read_text())
    workdir = _cohort_workdir(tmp_path, cfg)
    out = dry_run(workdir, "--configfile", str(path), "--config", "samples=samples.tsv", cwd=workdir)
    rules = planned(out)
    assert not {r for r in rules if r.startswith(("pretrain", "hnm"))}, f"{cohort} plans {sorted(rules)}"
    assert _json_args(out, "evaluate", "--pretrain") == [cfg.get("pretrain", {})]
    assert sorted(*_json_args(out, "evaluate", "--models")) == sorted(cfg["mil"]["models"])
    encoders = {e["name"]: e for e in _json_args(out, "embed", "--encoder")}
    assert sorted(encoders) == sorted(e["name"] for e in cfg["encoders"])
    assert {e["input_size"] for e in encoders.values()} == {cfg["tile"]["tile_size"]}  # not the demo's 64 px
    assert {p["tile_size"] for p in _json_args(out, "preprocess", "--params")} == {cfg["tile"]["tile_size"]}


def readme_report_command() -> list[str]:
    """The report command README.md shows for a run with a config of one's own (`my.yaml`)."""
    readme = (ROOT / "README.md").read_text()
    found = re.findall(r"^snakemake (?:.* )?--report results/report\.html$", readme, re.MULTILINE)
    assert found, "README.md shows no report command line in a code block"
    return shlex.split(found[0])[1:]


@pytest.mark.e2e
def test_the_readmes_report_command_works_on_a_cohort_of_ones_own(finished_run, tmp_path):
    """A non-demo cohort (the finished tiny run's slides, demo off: no tumour annotations, so no probe),
    run with its own config, then reported with the README's command line: every file marked for
    the report exists (the bare `--report` planned the demo's results/probe.csv)."""
    workdir = tmp_path / "cohort"
    shutil.copytree(finished_run, workdir, symlinks=True)
    shutil.rmtree(workdir / "results/probe")  # what a cohort without annotations never writes
    (workdir / "results/probe.csv").unlink()
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["demo"]["enabled"] = False  # the slides exist: a cohort like any other, without annotations
    (workdir / "my.yaml").write_text(yaml.safe_dump(cfg))
    run = [*SNAKEMAKE, "--directory", str(workdir), "--cores", "2"]
    # the run of my.yaml, cheaply: the annotation table and what reads it (heatmaps, front page) are redone;
    # by mtime only, as demo_slide's params hold demo.enabled and would redo the whole cohort
    proc = subprocess.run([*run, "--configfile", "my.yaml", "--rerun-triggers", "mtime", "--forcerun", "annotations_index"],
                          capture_output=True, text=True, cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((workdir / "results/annotations.json").read_text())["tumour"] == {}

    args = readme_report_command()
    assert "--configfile" in args, f"README's report command {args} does not name the run's config"
    proc = subprocess.run([*run, *args], capture_output=True, text=True, cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (workdir / "results/report.html").stat().st_size > 0
