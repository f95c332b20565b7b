"""The rerun matrix (issue 22): on a finished tiny run, every config key that reaches a job, changed to
another valid value, replans exactly the jobs that read it and their descendants; nothing more (wasteful),
nothing less (stale). Sample-sheet edits get the same table.

The table below is written once, as data: key -> (new value, the first jobs it reruns). The descendants are
not written by hand: they are Snakemake's own, from a dry run with `--forcerun <first jobs>` on the
unchanged config, so the test compares two dry runs job by job. Keys whose change alters the DAG's shape
(more folds, another seed, a renamed encoder) are compared rule by rule against a written set instead.
Every key of the typed config (slidemil.config's dataclasses) must have a row: a new key without one fails.

Code edits (a module's import closure) have their own table, in CODE_EDITS below.

One finished run, then only dry runs: each is a fork of one process that has imported Snakemake once
(start-up was half of a dry run), two at a time.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
import yaml

from test_workflow import ROOT, _tiny_config, snakemake

pytestmark = pytest.mark.e2e

# --- the table ------------------------------------------------------------------------------------------
# First jobs: rule-name globs (e.g. "embed_b*_resnet18_rand", one rule per batch), or output globs under
# results/ (a subset of a rule's jobs, e.g. one MIL run's). Encoders of the fixture: resnet18_rand (frozen),
# simclr-spatial (pretrained on all slides, spatial pairs) and the mining run simclr-hnm's round 1
# (simclr-hnm-r1, per fold). MIL runs: mean and abmil.
RAND = ["embed_b*_resnet18_rand"]
PRETRAIN = ["pretrain"]
TILE = ["tile_b*"]
MINE = ["hnm_mine"]
FINETUNE = ["hnm_finetune"]
HNM = [*MINE, *FINETUNE, "hnm_mining"]
ABMIL = ["results/mil/*/abmil/*/*/predictions.csv"]
MEAN = ["results/mil/*/mean/*/*/predictions.csv"]

ROWS: dict[str, tuple[object, list[str]]] = {
    # top level
    "seed": (1, ["demo_slide", "folds", *RAND, *PRETRAIN, *HNM, "probe", "evaluate"]),
    "on_slide_error": ("fail", TILE),
    "max_failed_fraction": (0.5, ["qc_cohort"]),
    "tile.max_bad_tiles_fraction": (0.05, TILE),
    "evaluate.min_slides_per_class": (3, ["evaluate"]),
    # the demo slides
    "demo.width": (1600, ["demo_slide"]),
    "demo.height": (1100, ["demo_slide"]),
    "demo.mpp": (0.25, ["demo_slide"]),
    # tissue mask and tiles: every stage after the slides
    **{f"mask.{k}": (v, TILE) for k, v in {
        "mask_mpp": 4.0, "min_saturation": 0.05, "max_value": 0.9, "min_value": 0.1, "exclude_ink": False,
        "black_ink_value": 0.25, "black_ink_saturation": 0.35, "close_radius_um": 8.0, "min_object_um2": 10000.0,
        "max_hole_um2": 30000.0, "exclude_blur": False, "min_sharpness": 0.001, "blur_window_um": 64.0,
        "min_blur_um2": 40000.0}.items()},
    **{f"tile.{k}": (v, TILE) for k, v in {
        "target_mpp": 2.0, "tile_size": 48, "min_tissue": 0.4, "jpeg_quality": 80, "shard_tiles": 128,
        "strip_tiles": 16, "allow_upsample": True, "copy_jpeg": False}.items()},
    "graph.radius": (2, ["graph_b*"]),
    # the frozen encoder's entry: its embedding, and the claims' metadata (evaluate)
    **{f"encoders[0].{k}": (v, [*RAND, "evaluate"]) for k, v in {
        "arch": "resnet34", "input_size": 48, "depth": 2, "batch_size": 64, "precision": "fp16"}.items()},
    # the pretrained encoder's entry: its training, and what is built from its weights
    **{f"pretrain.simclr-spatial.{k}": (v, [*PRETRAIN, "evaluate"]) for k, v in {
        "objective": "byol", "objective_args": {"temperature": 0.2}, "radius": 2, "p": 0.7,
        "lr": 0.01, "optimizer": "adamw", "weight_decay": 0.001, "warmup_epochs": 1, "head": {"out": 64},
        "augment": {"jitter": 0.2}, "ema": 0.98, "balance_labels": True, "precision": "fp16", "epochs": 2,
        "batch_size": 16, "tiles_per_epoch": 64}.items()},
    # the mining run: mine and fine-tune read every key (round params); the summary reads them too
    **{f"hnm.simclr-hnm.{k}": (v, HNM) for k, v in {
        "neg_ratio": 0.3, "pos_threshold": 0.4, "spl_start": 0.3, "spl_end": 0.9, "warmup_epochs": 0, "epochs": 1,
        "lr": 0.02, "weight_decay": 0.001, "batch_size": 8, "tiles_per_epoch": 16, "pos_batch_fraction": 0.4,
        "pos_query_fraction": 0.1, "mask_uncertain_neg": False, "temperature": 0.1, "gate_metric": "auc",
        "augment": {"jitter": 0.2}, "precision": "fp16", **{f"mil.{k}": v for k, v in {
            "epochs": 1, "lr": 0.001, "weight_decay": 0.001, "mirank_k": 5, "mirank_weight": 0.2,
            "dropout": 0.1}.items()}}.items()},
    # MIL: training keys read by every run; a run's block by that run only
    **{f"mil.{k}": (v, ["mil"]) for k, v in {
        "epochs": 1, "lr": 0.001, "weight_decay": 0.001, "mirank_k": 5, "mirank_weight": 0.2, "device": "cpu"}.items()},
    "mil.models.mean.hidden": (64, MEAN),
    "mil.models.mean.dropout": (0.1, MEAN),
    "mil.models.abmil.hidden": (64, ABMIL),
    "mil.models.abmil.dropout": (0.1, ABMIL),
    "mil.models.abmil.lr": (0.001, ABMIL),  # a training key overridden for one run
    # evaluation: the split, the statistics, the heatmaps
    "evaluate.val_fraction": (0.3, ["folds"]),
    "evaluate.bootstrap": (20, ["evaluate", "probe"]),
    "evaluate.baseline_encoder": ("simclr-spatial", ["evaluate"]),
    "evaluate.baseline_model": ("mean", ["evaluate"]),
    "evaluate.compare": ([{"a": "resnet18_rand/abmil", "b": "resnet18_rand/mean"}], ["evaluate"]),
    "evaluate.claim_margin": (0.05, ["evaluate"]),
    "evaluate.png_per_fold": (1, ["heatmaps"]),
    **{f"evaluate.froc.{k}": (v, ["heatmaps"]) for k, v in {
        "merge_um": 50.0, "itc_um": None, "mask_um": 4.0, "nms_radius": 2}.items()},
}

# Keys that change the DAG's shape: the planned rules (batch rules by family) must be exactly these.
EVERY_AFTER_FOLDS = {"folds", "pretrain", "embed_fold", "features_index_fold", "mil", "heatmaps", "probe",
                     "probe_table", "evaluate", *HNM, "all"}
STRUCTURAL: dict[str, tuple[object, set[str]]] = {
    "seeds": ([0, 1], {"mil", "evaluate", "all"}),  # the new seed's runs; heatmaps show seed 0's
    "evaluate.n_folds": (3, EVERY_AFTER_FOLDS - {"pretrain"}),
    "classes": (["normal", "tumour", "other"], set()),  # filled in below
    "mil.mirank": (True, {"mil", "heatmaps", "probe_table", "evaluate", "all"}),
    "mil.models": ({"mean": {}, "abmil": {}, "max": {}}, set()),
    "encoders[0].name": ("rand18", set()),
    "encoders[0].weights": ("weights.pt", set()),
    "encoders[0].extra": ({"zero_init_residual": True}, set()),
    "demo.enabled": (False, set()),
    "pretrain.simclr-spatial.sampler": ("augment", set()),
    "pretrain.simclr-spatial.backbone": ("resnet34", set()),
    "pretrain.simclr-spatial.depth": (2, set()),
    "pretrain.simclr-spatial.weights": ("weights.pt", set()),
    "pretrain.simclr-spatial.input_size": (48, set()),
    "pretrain.simclr-spatial.scope": ("folds", set()),
    "pretrain.simclr-spatial.enabled": (False, set()),
    "hnm.simclr-hnm.base": ("resnet18_rand", set()),
    "hnm.simclr-hnm.rounds": (2, set()),
    "hnm.simclr-hnm.enabled": (False, set()),
    "evaluate.use_official_split": (True, set()),
}

# Keys that change how a job runs, never what it writes: nothing is planned.
NO_CHANGE: dict[str, object] = {
    "tile.slides_per_job": 4,  # 8 slides: still 2 batches (hash buckets), so every job is the same job
    "graph.slides_per_job": 4,
    "embed.slides_per_job": 4,
    "embed.threads": 2,
    "embed.device": "cpu",
    "mil.cache_mb": 16.0,
    "encoders[0].workers": 1,
    "pretrain.simclr-spatial.workers": 1,
    "pretrain.simclr-spatial.gpus": 2,
    "hnm.simclr-hnm.workers": 1,
    "export.encoder": "resnet18_rand",  # `export_h5_all` only, not in `rule all`
}

# Sample-sheet edits: (edit, first jobs); the edit is a function of the sheet's rows.
SHEET_KEYS = ["samples"]  # the sheet's path: its edits are the rows of SHEET_EDITS
SHEET_EDITS: dict[str, tuple[typing.Callable[[list[list[str]]], list[list[str]]], list[str]]] = {}

# Code edits: rows belong to the code-hashing work (H4, issue 22); the table is theirs to fill.
CODE_EDITS: dict[str, list[str]] = {}


# --- the keys --------------------------------------------------------------------------------------------


def config_keys(cfg: dict) -> list[str]:
    """Every key of the typed config that reaches a job, dotted as the table writes them: a block's fields,
    nested blocks' fields (evaluate.froc.merge_um), each entry's fields (encoders[0].depth,
    pretrain.<name>.lr, hnm.<name>.mil.epochs) and each MIL run's keys (mil.models.<run>.<key>)."""
    from slidemil.config import Config, EncoderSpec, HNMParams, PretrainParams

    def fields(cls, prefix: str) -> list[str]:
        hints = typing.get_type_hints(cls)
        keys = []
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                keys += fields(hints[f.name], f"{prefix}{f.name}.")
            else:
                keys.append(f"{prefix}{f.name}")
        return keys

    entries = {"encoders": [(f"encoders[{i}]", EncoderSpec) for i in range(len(cfg["encoders"]))],
               "pretrain": [(f"pretrain.{n}", PretrainParams) for n in cfg["pretrain"]],
               "hnm": [(f"hnm.{n}", HNMParams) for n in cfg["hnm"]]}
    keys = []
    for key in fields(Config, ""):
        if key in entries:
            keys += [k for prefix, cls in entries[key] for k in fields(cls, prefix + ".")]
        else:
            keys.append(key)
    keys += [f"mil.models.{run}.{k}" for run, block in cfg["mil"]["models"].items() for k in block or {}]
    return keys


def set_key(cfg: dict, key: str, value) -> dict:
    """A copy of cfg with the dotted key (encoders[0].depth, mil.models.abmil.lr) set to value."""
    cfg = json.loads(json.dumps(cfg))
    parts = [int(p) if p.isdigit() else p for p in re.split(r"\.|\[(\d+)\]\.?", key) if p]
    node = cfg
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value
    return cfg


# --- dry runs --------------------------------------------------------------------------------------------


def _serve() -> None:
    """The dry-run server: imports Snakemake and the planning modules once, then forks one child per
    dry run named on stdin ([[argv, cwd, log], ...] as JSON), two at a time; prints {log: exit code}."""
    import snakemake.api  # noqa: F401  (the imports every child would otherwise repeat)
    import snakemake.cli
    import snakemake.dag  # noqa: F401
    import snakemake.scheduling.job_scheduler  # noqa: F401
    from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

    import slidemil.cohorts.sheet  # noqa: F401
    import slidemil.plan.catalogue  # noqa: F401
    import slidemil.plan.codeversion  # noqa: F401

    ExecutorPluginRegistry()  # collects the executor plugins (the SLURM one imports pandas)
    requests, running, codes = json.load(sys.stdin), {}, {}
    for argv, cwd, log in requests:
        if len(running) >= 2:
            pid, status = os.wait()
            codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
        pid = os.fork()
        if pid == 0:  # the child: one dry run, its stdout and stderr in `log`
            code = 1
            try:
                os.chdir(cwd)
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, 1), os.dup2(fd, 2)
                snakemake.cli.main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os._exit(code)
        running[pid] = log
    while running:
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    json.dump(codes, sys.stdout)


def dry_runs(workdir: Path, runs: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """Name -> jobs per rule of a dry run with these extra arguments (each run's log in workdir/matrix/)."""
    logs = workdir / "matrix"
    logs.mkdir(exist_ok=True)
    base = ["--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2", "--nolock",
            "-n", "--quiet", "rules"]
    requests = [[[*base, *args], str(workdir), str(logs / f"{_safe(name)}.log")] for name, args in runs.items()]
    serve = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_rerun_matrix as m; m._serve()"
    proc = subprocess.run([sys.executable, "-c", serve], input=json.dumps(requests), capture_output=True, text=True,
                          cwd=workdir, check=True)
    codes = json.loads(proc.stdout)
    out = {}
    for name, (_, _, log) in zip(runs, requests):
        text = Path(log).read_text()
        if codes[log] != 0:
            raise AssertionError(f"dry run {name} failed ({log}):\n{text[-3000:]}")
        out[name] = jobs_of(text)
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name)


def jobs_of(dry_run: str) -> dict[str, int]:
    """Jobs per rule from a dry run's first job-stats table (dry runs print it twice)."""
    table = dry_run.split("Job stats:")[1] if "Job stats:" in dry_run else ""
    table = table.split("Reasons:")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)
            if m.group(1) not in ("total", "job")}


def family(rule: str) -> str:
    """A batch rule's family: embed_b0_<encoder> -> embed (embed_fold per fold), tile_b0 -> tile."""
    if re.fullmatch(r"embed_b\d+_\w+", rule):
        return "embed_fold" if re.fullmatch(r"embed_b\d+_\w+_fold\d+", rule) else "embed"
    return re.sub(r"_b\d+$", "", rule) if re.fullmatch(r"(graph|tile)_b\d+", rule) else rule


# --- the finished run ------------------------------------------------------------------------------------


def matrix_config(workdir: Path) -> Path:
    """The tiny config (8 slides, 2 folds), one seed, and one round of the mining run, briefly: every
    stage of the workflow runs, so every key reaches a job."""
    path = _tiny_config(workdir, seeds=[0], **{"mil.epochs": 2})
    cfg = yaml.safe_load(path.read_text())
    cfg["hnm"]["simclr-hnm"].update(enabled=True, rounds=1, epochs=2, warmup_epochs=1, batch_size=16,
                                    tiles_per_epoch=32, mil={"epochs": 2})
    path.write_text(yaml.safe_dump(cfg))
    (workdir / "weights.pt").write_bytes(b"")  # a file to point `weights:` keys at (dry runs never read it)
    return path


@pytest.fixture(scope="module")
def matrix_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("matrix")
    matrix_config(workdir)
    snakemake(workdir)
    return workdir


def test_every_config_key_has_a_row(tmp_path):
    """A new config key is a new row: the stages that read it (ROWS), the rules of the DAG it reshapes
    (STRUCTURAL), or none (NO_CHANGE)."""
    cfg = yaml.safe_load(matrix_config(tmp_path).read_text())
    rows = [*ROWS, *STRUCTURAL, *NO_CHANGE, *SHEET_KEYS]
    assert len(rows) == len(set(rows)), sorted(k for k in rows if rows.count(k) > 1)
    missing = [k for k in config_keys(cfg) if k not in rows]
    assert not missing, f"config keys without a row in tests/test_rerun_matrix.py: {missing}"


def test_rerun_matrix(matrix_run):
    """Each key, changed alone on the finished run, plans exactly what the table says."""
    started = time.monotonic()
    workdir = matrix_run
    base = yaml.safe_load((workdir / "config.yaml").read_text())
    configs = workdir / "matrix"
    configs.mkdir(exist_ok=True)
    runs: dict[str, list[str]] = {"(unchanged)": ["--configfile", str(workdir / "config.yaml")],
                                  "(forceall)": ["--configfile", str(workdir / "config.yaml"), "--forceall"]}
    for key, value in [*((k, v) for k, (v, _) in ROWS.items()), *((k, v) for k, (v, _) in STRUCTURAL.items()),
                       *NO_CHANGE.items()]:
        path = configs / f"{_safe(key)}.yaml"
        path.write_text(yaml.safe_dump(set_key(base, key, value)))
        runs[key] = ["--configfile", str(path)]
    planned = dry_runs(workdir, runs)
    assert planned["(unchanged)"] == {}, f"the finished run is not finished: {planned['(unchanged)']}"
    rules = list(planned["(forceall)"])
    forced = {}  # first jobs -> the dry run that forces them on the unchanged config
    for key, (_, first) in ROWS.items():
        forced[tuple(first)] = ["--configfile", str(workdir / "config.yaml"), "--forcerun",
                                *targets(workdir, first, rules)]
    expected = dry_runs(workdir, {"|".join(first): args for first, args in forced.items()})
    failures = []
    for key, (value, first) in ROWS.items():
        want = expected["|".join(first)]
        if planned[key] != want:
            failures.append(difference(key, value, want, planned[key]))
    for key, (value, families) in STRUCTURAL.items():
        got = {family(r) for r in planned[key]}
        if got != families:
            failures.append(f"{key} = {value!r}: expected rules {sorted(families)}, planned {sorted(got)}; "
                            f"more: {sorted(got - families)}, missing: {sorted(families - got)}")
    for key, value in NO_CHANGE.items():
        if planned[key]:
            failures.append(f"{key} = {value!r}: expected nothing, planned {planned[key]}")
    print(f"rerun matrix: {len(runs) + len(forced)} dry runs in {time.monotonic() - started:.0f} s")
    assert not failures, "\n".join(failures)


def targets(workdir: Path, first: list[str], rules: list[str]) -> list[str]:
    """--forcerun targets: rule-name globs matched against the workflow's rules, output globs against the
    finished run's files."""
    out = []
    for pattern in first:
        found = (sorted(str(p.relative_to(workdir)) for p in workdir.glob(pattern)) if pattern.startswith("results/")
                 else fnmatch.filter(rules, pattern))
        assert found, f"{pattern!r} names no rule or output of the finished run"
        out += found
    return out


def difference(key: str, value, want: dict[str, int], got: dict[str, int]) -> str:
    more = {r: n - want.get(r, 0) for r, n in got.items() if n > want.get(r, 0)}
    less = {r: n - got.get(r, 0) for r, n in want.items() if n > got.get(r, 0)}
    return (f"{key} = {value!r}: planned jobs differ from the stages that read it and their descendants; "
            f"wasteful (planned, not expected): {more}; stale (expected, not planned): {less}")
