"""The Snakemake workflow end to end on a tiny cohort, its rerun behaviour, lint and conda envs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _tiny_config(workdir: Path, n_slides: int = 8, **overrides) -> Path:
    """The demo config shrunk to a few small slides, 2 folds and few epochs (about a minute on 2 cores)."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    rows = ["slide_id\tpath\tlabel\tpatient_id"]
    for i in range(n_slides):
        rows.append(f"t{i}\tresults/demo/slides/t{i}.tiff\t{'tumour' if i % 2 else 'normal'}\tP{i}")
    (workdir / "samples.tsv").write_text("\n".join(rows) + "\n")
    cfg["samples"] = "samples.tsv"
    cfg["demo"].update(width=1536, height=1024)
    cfg["evaluate"].update(n_folds=2, bootstrap=50)
    cfg["mil"].update(epochs=3)
    cfg["seeds"] = [0, 1]  # the seed wildcard, at its smallest
    # batches of 3 to 6 slides: 2 per stage (a power of two), still 2 with a 9th slide; tile and embed
    # batches are the same hash buckets, so a new slide re-tiles and re-embeds one batch
    cfg["embed"]["slides_per_job"] = cfg["tile"]["slides_per_job"] = 3
    cfg["encoders"][0].update(depth=2)
    for entry in (cfg.get("pretrain") or {}).values():  # the pretrain stage runs, briefly
        entry.update(epochs=1, tiles_per_epoch=128, batch_size=32)
    for key, value in overrides.items():
        block, _, name = key.partition(".")
        if name:
            cfg[block][name] = value
        else:  # a top-level key, e.g. seeds
            cfg[block] = value
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Jobs per rule that a dry run (with `args`) would execute (from the job-stats table)."""
    out = snakemake(workdir, "-n", "--quiet", "rules", *args).stdout
    jobs: dict[str, int] = {}
    first_table = out.split("Job stats:")[1] if "Job stats:" in out else ""  # dry runs print it twice
    for line in first_table.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) not in ("total", "job"):
            rule = m.group(1)  # batched embedding: embed_b{batch}_{encoder}[_fold{k}] (one rule per batch)
            if re.fullmatch(r"embed_b\d+_\w+", rule):
                rule = "embed_fold" if re.fullmatch(r"embed_b\d+_\w+_fold\d+", rule) else "embed"
            elif re.fullmatch(r"(graph|tile)_b\d+", rule):  # graphs and tiles: one rule per batch too
                rule = rule.split("_")[0]
            jobs[rule] = jobs.get(rule, 0) + int(m.group(2))
    return jobs


def planned_rules(workdir: Path) -> set[str]:
    return set(planned_jobs(workdir))


@pytest.mark.e2e
def test_end_to_end_benchmark(finished_run):
    results = finished_run / "results"
    models = set(yaml.safe_load((finished_run / "config.yaml").read_text())["mil"]["models"])
    bench = pd.read_csv(results / "benchmark.csv")
    encoders = {"resnet18_rand", "simclr-spatial"}  # the random floor and the demo's pretrained encoder
    assert len(bench) == len(encoders) * len(models) and set(bench["model"]) == models  # encoder x model
    assert set(bench["encoder"]) == encoders
    assert (bench[["n_folds", "n_seeds"]] == [2, 2]).all().all()
    assert (bench["pooled_auc_ci_lo"] <= bench["pooled_auc"]).all() and (bench["pooled_auc"] <= bench["pooled_auc_ci_hi"]).all()
    runs = pd.read_csv(results / "benchmark_runs.csv")
    assert len(runs) == len(encoders) * len(models) * 2 * 2 and set(runs["seed"]) == {0, 1}  # x folds x seeds
    # the two seeds are different runs, not copies of one
    by_seed = runs.sort_values(["model", "fold"]).groupby("seed")["auc"].apply(list)
    assert by_seed[0] != by_seed[1]
    comparisons = pd.read_csv(results / "comparisons.csv")
    by_model = comparisons[comparisons["source"] == "model"]
    assert set(by_model["a_model"]) == models - {"abmil"} and (by_model["b_model"] == "abmil").all()
    assert len(by_model) == len(encoders) * (len(models) - 1)  # every model vs ABMIL, per encoder
    by_encoder = comparisons[comparisons["source"] == "encoder"]
    assert set(zip(by_encoder["a_encoder"], by_encoder["b_encoder"])) == {("simclr-spatial", "resnet18_rand")}
    assert len(by_encoder) == len(models)  # the pretrained encoder vs the baseline, per model
    assert (comparisons["n_slides"] == 8).all()
    claims = pd.read_csv(results / "claims.csv")
    assert set(claims["verdict"]) <= {"holds", "does not hold", "inconclusive", "not run"}
    qc = pd.read_csv(finished_run / "results" / "qc" / "cohort.tsv", sep="\t")
    assert len(qc) == 8 and (qc["n_tiles"] > 0).all()
    assert (finished_run / "results" / "roc.png").stat().st_size > 0
    inst = pd.read_csv(finished_run / "results" / "heatmaps" / "resnet18_rand" / "abmil" / "instance_metrics.csv")
    assert len(inst) == 8 and inst.loc[inst["label"] == "tumour", "instance_auc"].notna().any()
    heat = finished_run / "results" / "heatmaps" / "resnet18_rand" / "abmil"
    assert len(list((heat / "png").glob("*.png"))) == 4  # 2 per fold
    assert len(list((heat / "geojson").glob("*.geojson"))) == 8  # every test slide, for QuPath
    assert (heat / "froc.csv").stat().st_size > 0 and (heat / "training_curves.png").stat().st_size > 0
    for rule in ("tile", "graph", "embed", "mil"):
        assert list((finished_run / "logs" / rule).rglob("*.log")), f"no logs for {rule}"
    tile_log = next(p for p in (finished_run / "logs" / "tile").glob("batch*.log") if "t1:" in p.read_text())
    text = tile_log.read_text()  # tqdm/logging reached the batch's log, each slide's lines named
    assert "tissue" in text and "tile" in text and "slides" in text  # per slide the mask, then the tiles


@pytest.mark.e2e
def test_rerun_plans_only_changed_stages(finished_run):
    assert planned_rules(finished_run) == set()  # complete: nothing to do
    _tiny_config(finished_run, **{"mil.lr": 0.001})
    assert planned_rules(finished_run) == {"mil", "evaluate", "heatmaps", "all"}
    _tiny_config(finished_run, **{"tile.tile_size": 48})
    planned = planned_rules(finished_run)
    assert {"tile", "graph", "embed", "mil", "evaluate", "qc_cohort"} <= planned
    assert "demo_slide" not in planned
    _tiny_config(finished_run, **{"graph.radius": 2})  # graphs are their own jobs: tiles stay
    planned = planned_rules(finished_run)
    assert {"graph", "graphs_index", "mil"} <= planned and "tile" not in planned
    _tiny_config(finished_run)  # back to the finished config


@pytest.mark.e2e
def test_adding_a_slide_runs_only_its_jobs_and_cohort_stages(finished_run):
    sheet = finished_run / "samples.tsv"
    original = sheet.read_text()
    try:
        sheet.write_text(original + "t_new\tresults/demo/slides/t_new.tiff\ttumour\tP_new\n")
        jobs = planned_jobs(finished_run)
        per_slide = {r: jobs.get(r) for r in ("demo_slide", "tile", "graph")}
        assert per_slide == dict.fromkeys(per_slide, 1), jobs  # only the new slide('s batch)
        # embedding: the new slide's batch under the random encoder, and both batches under the
        # transductive simclr-spatial encoder, whose pretraining on the cohort reruns with a new slide
        assert jobs.get("embed") == 1 + 2 and jobs.get("pretrain") == 1, jobs
        assert {"qc_cohort", "folds", "mil", "evaluate"} <= set(jobs)
        # the cohort's indexes are rewritten (one per encoder, and the graphs'), so MIL reruns through them
        assert jobs.get("features_index") == 2 and jobs.get("graphs_index") == 1, jobs
    finally:
        sheet.write_text(original)


@pytest.mark.e2e
def test_reembedding_a_batch_reruns_its_feature_index_and_its_readers_only(finished_run):
    """The MIL jobs list no store: a re-embedded batch reaches them through its folder's index.tsv."""
    jobs = planned_jobs(finished_run, "--forcerun", "embed_b0_resnet18_rand")
    mil_runs = 2 * 2 * 2  # the random encoder's 2 models x 2 folds x 2 seeds
    assert jobs == {"embed": 1, "features_index": 1, "mil": mil_runs, "heatmaps": 2, "probe": 1, "probe_table": 1,
                    "evaluate": 1, "all": 1}, jobs


@pytest.mark.e2e
def test_editing_a_module_a_stage_imports_replans_that_stage(finished_run, tmp_path):
    """metrics.py is imported by mil, evaluate, heatmaps and probe (not by tile): editing it reruns those."""
    copy = tmp_path / "repo"
    copy.mkdir()
    for part in ("Snakefile", "workflow", "src", "config"):
        src = ROOT / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, copy / part)
    cmd = [*SNAKEMAKE, "--snakefile", str(copy / "Snakefile"), "--directory", str(finished_run), "--configfile",
           str(finished_run / "config.yaml"), "--cores", "2", "-n", "--quiet", "rules"]

    def planned() -> set[str]:
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=finished_run, check=True).stdout
        first_table = out.split("Job stats:")[1] if "Job stats:" in out else ""
        return {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+$", first_table, re.M)} - {"total", "job"}

    assert planned() == set()  # the copy's code is the code the run was made with
    metrics = copy / "src" / "slidemil" / "evaluate" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\n_EDITED = True\n")
    readers = {"mil", "evaluate", "heatmaps", "probe"}
    assert readers <= planned() <= readers | {"probe_table", "all"}


def test_cohort_jobs_read_one_index_per_feature_folder_not_every_store(tmp_path):
    """mil, heatmaps and probe take each scope's index.tsv (one input edge, however many slides), and
    only the index jobs list every store: the MIL jobs' per-slide inputs were most of the planning time."""
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["pretrain"]
    fold_trained = {**base["simclr-spatial"], "objective": "weaksupcon"}  # uses labels: one encoder per fold
    _tiny_config(tmp_path, pretrain={**base, "wsc": fold_trained})
    out = snakemake(tmp_path, "-n").stdout
    jobs = {}  # rule -> [the input line of each of its jobs]
    for m in re.finditer(r"^rule (\w+):\n((?:    .*\n)*)", out, re.M):
        inputs = re.search(r"^    input: (.*)$", m.group(2), re.M)
        jobs.setdefault(m.group(1), []).append(inputs.group(1).split(", ") if inputs else [])
    assert len(jobs["features_index"]) == 2 and len(jobs["features_index_fold"]) == 2  # 2 encoders; wsc x 2 folds
    assert sorted(len(i) for i in jobs["features_index_fold"]) == [9, 9]  # 8 stores + the sheet
    assert len(jobs["graphs_index"]) == 1
    for rule in ("mil", "heatmaps", "probe"):
        for inputs in jobs[rule]:
            assert not [i for i in inputs if i.endswith((".zarr", ".npz"))], (rule, inputs)
    mil_features = {i for inputs in jobs["mil"] for i in inputs if i.startswith("results/features/")}
    assert mil_features == {"results/features/resnet18_rand/index.tsv", "results/features/simclr-spatial/index.tsv",
                            "results/features/wsc/fold0/index.tsv", "results/features/wsc/fold1/index.tsv"}
    assert all("results/graphs/index.tsv" in inputs for inputs in jobs["mil"])


@pytest.mark.e2e
def test_no_command_line_grows_with_the_cohort(tmp_path):
    """Cohort-wide jobs (QC, pretraining, mining, probe, heatmaps) name folders and the sheet, not every
    slide's file: at 10,000 slides such a list passes Linux's 128 KiB limit on one argument and the job
    dies with "Argument list too long". Every command is planned at 6 and at 60 slides: none grows."""
    hnm = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["hnm"]["simclr-hnm"]
    longest: dict[int, dict[str, int]] = {}
    for n in (6, 60):
        workdir = tmp_path / f"n{n}"
        workdir.mkdir()
        _tiny_config(workdir, n_slides=n, **{"hnm.simclr-hnm": {**hnm, "enabled": True}})
        out = snakemake(workdir, "-n", "-p").stdout
        per_rule = longest.setdefault(n, {})
        for m in re.finditer(r"^rule (\w+):\n(?:    .*\n)*Shell command: (.*)$", out, re.M):
            if not re.match(r"(embed|graph|tile)_b\d+", m.group(1)):  # a batch lists its slides (slides_per_job)
                per_rule[m.group(1)] = max(per_rule.get(m.group(1), 0), len(m.group(2)))
    cohort_wide = {"qc_cohort", "pretrain", "hnm_mine", "hnm_finetune", "hnm_mining", "probe", "heatmaps",
                   "annotations_index", "graphs_index", "features_index"}
    assert cohort_wide <= set(longest[60]), sorted(longest[60])
    for rule, length in longest[60].items():  # ids t10..t59 are one character longer than t0..t5
        assert length <= longest[6][rule] + 8, (rule, longest[6][rule], length)


def test_lint_is_clean():
    proc = subprocess.run([*SNAKEMAKE, "--lint", "--snakefile", str(ROOT / "Snakefile")], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


def test_every_rule_has_a_conda_env_that_agrees_with_pyproject():
    pins = {}
    for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name = re.split(r"[<>=!~ ]", dep, 1)[0].lower()
        pins[name] = dep.replace(" ", "")
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        rules = re.findall(r"^\s*rule( \w+)?:", text, re.M)  # named, or named in a loop (embed batches)
        envs = re.findall(r'conda:\s*\n\s*"([^"]+)"', text)
        assert len(envs) == len(rules), f"{smk.name}: every rule needs a conda: env"
        for env in envs:
            spec = yaml.safe_load((smk.parent / env).read_text())
            pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
            for req in pip:
                name = re.split(r"[<>=!~ ]", req, 1)[0].lower()
                assert name in pins, f"{env}: {name} is not a dependency in pyproject.toml"
                assert req.replace(" ", "") == pins[name], f"{env}: {req} disagrees with pyproject's {pins[name]}"


def test_bad_sample_sheet_stops_before_any_job(tmp_path):
    _tiny_config(tmp_path)
    sheet = (tmp_path / "samples.tsv").read_text().replace("\tnormal\tP2", "\tcancer\tP2")
    (tmp_path / "samples.tsv").write_text(sheet)
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert "line 4 (t2): unknown label 'cancer'" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
