"""The rerun matrix (issue 22): on a finished tiny run, every config key that reaches a job, changed to
another valid value, replans exactly the jobs that read it and their descendants; nothing more (wasteful),
nothing less (stale). Sample-sheet edits get the same table.

The table below is written once, as data: key -> (new value, the first jobs it reruns, as output globs of
the finished run). The descendants are not written by hand: they are Snakemake's own, from a dry run with
`--forcerun <those outputs>` on the unchanged config, so the test compares two dry runs job by job. Keys
whose change alters the DAG's shape (more folds, another seed, a renamed encoder) and sheet edits (a new
slide's jobs cannot be forced) are compared against written jobs per rule family instead. Every key of the
typed config (slidemil.config's dataclasses) must have a row: a new key without one fails.

Two finished runs: the shared `finished_run` (the demo's slides, 2 folds, 2 seeds), and a copy of it made
a researcher's cohort (its own sheet: demo off, annotations in the sheet), with one short round of
hard-negative mining: the mining keys and the sheet edits are checked there. Code edits (a module's import
closure) are tests/test_workflow.py's (test_code_edits_rerun_what_they_change_and_nothing_else).

Then only dry runs: each is a fork of one process that has imported Snakemake and the planning modules once
and read the package's code once (start-up and code hashing were most of a dry run), two at a time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path

import pytest
import yaml

from test_workflow import ROOT, _tiny_config, snakemake

# --- the table ------------------------------------------------------------------------------------------
# First jobs, as output globs of the finished run (--forcerun takes files): the job writing each one.
# Encoders of `finished_run`: resnet18_rand (frozen) and simclr-spatial (pretrained once on every slide,
# spatial pairs, label-free); MIL runs mean and abmil; seeds 0 and 1.
DEMO = ["results/demo/slides/*.tiff"]
TILE = ["results/tiles/*.zarr"]
QC = ["results/qc/cohort.tsv"]
GRAPH = ["results/graphs/*.npz"]
RAND = ["results/features/resnet18_rand/*.zarr"]
PRETRAIN = ["results/encoders/simclr-spatial/all/encoder.pt"]
FOLDS = ["results/folds.csv"]
MIL = ["results/mil/*/*/fold*/seed*/predictions.csv"]
ABMIL = ["results/mil/*/abmil/fold*/seed*/predictions.csv"]
MEAN = ["results/mil/*/mean/fold*/seed*/predictions.csv"]
EVALUATE = ["results/benchmark.csv"]
HEATMAPS = ["results/heatmaps/*/*/instance_metrics.csv"]
PROBE = ["results/probe/*.csv"]
# the mining run (cohort_run): round 1 of simclr-hnm per fold, and its evidence table
MINE = ["results/hnm/simclr-hnm/fold*/round1/gate.json"]
FINETUNE = ["results/encoders/simclr-hnm-r1/fold*/encoder.pt"]
MINING = ["results/hnm/simclr-hnm/mining.csv"]

ROWS: dict[str, tuple[object, list[str]]] = {
    # top level: `seed` seeds the demo slides, the folds, random encoders, pretraining and the bootstrap
    "seed": (1, [*DEMO, *FOLDS, *RAND, *PRETRAIN, *EVALUATE, *PROBE]),
    "on_slide_error": ("fail", TILE),  # the QC gate reads it too, as a resource: how the run stops, not the table
    "evaluate.min_slides_per_class": (3, EVALUATE),
    # the demo slides
    "demo.width": (1600, DEMO),
    "demo.height": (1100, DEMO),
    "demo.mpp": (0.25, DEMO),
    # tissue mask and tiles: every stage after the slides
    **{f"mask.{k}": (v, TILE) for k, v in {
        "mask_mpp": 4.0, "min_saturation": 0.05, "max_value": 0.9, "min_value": 0.1, "exclude_ink": False,
        "black_ink_value": 0.25, "black_ink_saturation": 0.35, "close_radius_um": 8.0, "min_object_um2": 10000.0,
        "max_hole_um2": 30000.0, "exclude_blur": False, "min_sharpness": 0.001, "blur_window_um": 64.0,
        "min_blur_um2": 40000.0}.items()},
    **{f"tile.{k}": (v, TILE) for k, v in {
        "target_mpp": 2.0, "tile_size": 48, "min_tissue": 0.4, "jpeg_quality": 80, "shard_tiles": 128,
        "strip_tiles": 16, "allow_upsample": True, "copy_jpeg": False, "max_bad_tiles_fraction": 0.05}.items()},
    # the graphs: spatial pretraining reads them; of the MIL models only SRMIL (not in this run)
    "graph.radius": (2, GRAPH),
    # the frozen encoder's entry: its embedding, and the claims' metadata (evaluate)
    **{f"encoders[0].{k}": (v, [*RAND, *EVALUATE]) for k, v in {
        "arch": "resnet34", "input_size": 48, "depth": 1, "batch_size": 64, "precision": "fp16"}.items()},
    "encoders[0].weights": ("weights.pt", RAND),
    "encoders[0].extra": ({"zero_init_residual": True}, RAND),
    # the pretrained encoder's entry: its training, and the claims' metadata
    **{f"pretrain.simclr-spatial.{k}": (v, [*PRETRAIN, *EVALUATE]) for k, v in {
        "objective": "byol", "objective_args": {"temperature": 0.2}, "radius": 2, "p": 0.7,
        "lr": 0.01, "optimizer": "adamw", "weight_decay": 0.001, "warmup_epochs": 1, "head": {"out": 64},
        "augment": {"jitter": 0.2}, "ema": 0.98, "balance_labels": True, "precision": "fp16", "epochs": 2,
        "batch_size": 16, "tiles_per_epoch": 64, "sampler": "augment", "backbone": "resnet34", "depth": 2,
        "weights": "weights.pt", "input_size": 48}.items()},
    # the device decides autocast (precision applies on CUDA only): what is written, so it reruns
    "embed.device": ("cpu", [*RAND, "results/features/simclr-spatial/*.zarr", *PRETRAIN]),
    # MIL: training keys read by every run; a run's block by that run only
    **{f"mil.{k}": (v, MIL) for k, v in {
        "epochs": 1, "lr": 0.001, "weight_decay": 0.001, "mirank_k": 5, "mirank_weight": 0.2, "device": "cpu"}.items()},
    "mil.models.mean.hidden": (64, MEAN),
    "mil.models.mean.dropout": (0.1, MEAN),
    "mil.models.abmil.hidden": (64, ABMIL),
    "mil.models.abmil.dropout": (0.1, ABMIL),
    "mil.models.abmil.lr": (0.001, ABMIL),  # a training key overridden for one run
    # evaluation: the split, the statistics, the heatmaps
    "evaluate.val_fraction": (0.3, FOLDS),
    "evaluate.bootstrap": (20, [*EVALUATE, *PROBE]),
    "evaluate.baseline_encoder": ("simclr-spatial", EVALUATE),
    "evaluate.baseline_model": ("mean", EVALUATE),
    "evaluate.compare": ([{"a": "resnet18_rand/abmil", "b": "resnet18_rand/mean"}], EVALUATE),
    "evaluate.claim_margin": (0.05, EVALUATE),
    "evaluate.png_per_fold": (1, HEATMAPS),
    **{f"evaluate.froc.{k}": (v, HEATMAPS) for k, v in {
        "merge_um": 50.0, "itc_um": None, "mask_um": 4.0, "nms_radius": 2}.items()},
}

# Keys that change the DAG's shape: jobs per rule family (batch rules by family, see `family`), exactly.
COHORT = {"evaluate": 1, "front_page": 1, "all": 1}  # the benchmark, the front page, the target
STRUCTURAL: dict[str, tuple[object, dict[str, int]]] = {
    # a third seed: its MIL runs (2 encoders x 2 models x 2 folds); heatmaps show seed 0's
    "seeds": ([0, 1, 2], {"mil": 8, **COHORT}),
    # new folds: every fold-dependent job; label-free pretraining and the embedding stay
    "evaluate.n_folds": (3, {"folds": 1, "mil": 24, "probe": 2, "heatmaps": 4, "probe_table": 1, **COHORT}),
    "evaluate.use_official_split": (True, {"folds": 1, "mil": 8, "probe": 2, "heatmaps": 4, "probe_table": 1,
                                           **COHORT}),
    # a new class: everything trained or scored with labels; not label-free pretraining nor the features
    "classes": (["normal", "tumour", "other"], {"mil": 16, "probe": 2, "heatmaps": 4, "probe_table": 1, **COHORT}),
    # a new MIL run: its runs and heatmaps only
    "mil.models": ({"mean": {"hidden": 128, "dropout": 0.25}, "abmil": {"hidden": 128, "dropout": 0.25}, "max": {}},
                   {"mil": 8, "heatmaps": 2, **COHORT}),
    # a renamed encoder: its embedding under the new name and what reads it
    "encoders[0].name": ("rand18", {"embed": 2, "features_index": 1, "mil": 8, "probe": 1, "heatmaps": 2,
                                    "probe_table": 1, **COHORT}),
    # the sheet's slides become the user's own files: no slide is remade; the annotations index and what
    # reads it, and the benchmark (no longer the demo's claims)
    "demo.enabled": (False, {"annotations_index": 1, "heatmaps": 4, "front_page": 1, "all": 1}),
    # pretraining per fold: 2 trainings, per-fold embedding
    "pretrain.simclr-spatial.scope": ("folds", {"pretrain": 2, "embed_fold": 4, "features_index_fold": 2, "mil": 8,
                                                "probe": 1, "heatmaps": 2, "probe_table": 1, **COHORT}),
    "pretrain.simclr-spatial.enabled": (False, {"probe_table": 1, **COHORT}),  # its rows leave the tables
}

# Keys that change how a job runs, never what it writes: nothing is planned.
NO_CHANGE: dict[str, object] = {
    "tile.slides_per_job": 4,  # 8 slides: still 2 batches (hash buckets), so every job is the same job
    "graph.slides_per_job": 16,  # still 1 batch
    "max_failed_fraction": 0.5,  # the QC gate (a resource): whether the run stops, not what the table holds
    "embed.slides_per_job": 4,
    "embed.threads": 2,
    "mil.cache_mb": 16,
    "encoders[0].workers": 1,  # DataLoader workers and GPUs per job: resources, not params
    "pretrain.simclr-spatial.workers": 1,
    "pretrain.simclr-spatial.gpus": 2,
    "export.encoder": "resnet18_rand",  # `export_h5_all` only, not in `rule all`
}

# The mining run's keys, on cohort_run (one round per fold): the round's every job reads its params.
HNM = [*MINE, *FINETUNE, *MINING]
MINING_ROWS: dict[str, tuple[object, list[str]]] = {
    **{f"hnm.simclr-hnm.{k}": (v, HNM) for k, v in {
        "neg_ratio": 0.3, "pos_threshold": 0.4, "spl_start": 0.3, "spl_end": 0.9, "warmup_epochs": 1, "epochs": 2,
        "lr": 0.02, "weight_decay": 0.001, "batch_size": 8, "tiles_per_epoch": 16, "pos_batch_fraction": 0.4,
        "pos_query_fraction": 0.1, "mask_uncertain_neg": False, "temperature": 0.1, "gate_metric": "auc",
        "augment": {"jitter": 0.2}, "precision": "fp16", **{f"mil.{k}": v for k, v in {
            "epochs": 1, "lr": 0.001, "weight_decay": 0.001, "mirank_k": 5, "mirank_weight": 0.2,
            "dropout": 0.1}.items()}}.items()},
}
# Keys whose every other value is rejected before any job here, with this message (the run stops: nothing stale).
REJECTED: dict[str, tuple[object, str]] = {
    "mil.mirank": (True, "mirank needs instance logits, which abmil has not"),
}

# A round of the mining run and what reads its encoder (per fold: mine, fine-tune, 2 embed batches; its
# index; its MIL runs (2 models x 2 folds), probe and heatmaps; the evidence table, the benchmark)
ROUND = {"hnm_mine": 2, "hnm_finetune": 2, "hnm_mining": 1, "embed_fold": 4, "features_index_fold": 2, "mil": 4,
         "probe": 1, "heatmaps": 2, "probe_table": 1, **COHORT}
MINING_STRUCTURAL: dict[str, tuple[object, dict[str, int]]] = {
    "hnm.simclr-hnm.base": ("resnet18_rand", ROUND),  # round 1 again, from another encoder
    "hnm.simclr-hnm.rounds": (2, ROUND),  # round 2 only: round 1 is done
    "hnm.simclr-hnm.enabled": (False, {"probe_table": 1, **COHORT}),  # its rows leave the tables
}
MINING_NO_CHANGE: dict[str, object] = {"hnm.simclr-hnm.workers": 1}

# Sample-sheet edits, on cohort_run (its own sheet): edit -> jobs per rule family, exactly.
SHEET_KEYS = ["samples"]  # the sheet's path: its edits are the rows of SHEET_EDITS
# What reads labels reruns (folds, every MIL run, mining, probe, heatmaps); what reads slides reruns for a new,
# dropped or moved slide: its tile, graph and embed batches (hash buckets), the QC table and indexes, and the
# label-free pretraining on the whole cohort (transductive) with both batches of its embedding.
# annotations_index reads the sheet's `annotation` column: it reruns on any edit (a second, its readers
# rerun anyway).
LABELLED = {"annotations_index": 1, "folds": 1, "mil": 12, "probe": 3, "heatmaps": 6, "probe_table": 1,
            "hnm_mine": 2, "hnm_finetune": 2, "hnm_mining": 1, "embed_fold": 4, "features_index_fold": 2, **COHORT}
SLIDE = {"tile": 1, "graph": 1, "qc_cohort": 1, "graphs_index": 1, "embed": 1 + 2, "features_index": 2,
         "pretrain": 1}
SHEET_EDITS: dict[str, dict[str, int]] = {
    "add a slide": {**LABELLED, **SLIDE},
    "drop a slide": {**LABELLED, **SLIDE},
    "relabel a slide": LABELLED,  # not the tiles, QC, graphs, embedding nor label-free pretraining
    "fix a slide's path": {**LABELLED, **SLIDE},  # another file, as far as the workflow can tell
}


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
    """The dry-run server: imports Snakemake and the planning modules once and reads the package's code
    once, then forks one child per dry run named on stdin ([[argv, cwd, log], ...] as JSON), two at a
    time; prints {log: [exit code, CPU seconds]}."""
    import snakemake.api  # noqa: F401  (the imports every child would otherwise repeat)
    import snakemake.cli
    import snakemake.dag  # noqa: F401
    import snakemake.scheduling.job_scheduler  # noqa: F401
    from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

    import slidemil.cohorts.sheet  # noqa: F401
    import slidemil.plan.catalogue  # noqa: F401
    from slidemil.plan import registered
    from slidemil.plan.codeversion import code_version

    ExecutorPluginRegistry()  # collects the executor plugins (the SLURM one imports pandas)
    package = ROOT / "src" / "slidemil"
    code_version(package, *(p.relative_to(package).as_posix() for p in package.rglob("*.py")))  # parsed once
    registered.modules()
    requests, running, codes = json.load(sys.stdin), {}, {}

    def reap() -> None:
        pid, status, usage = os.wait4(-1, 0)
        codes[running.pop(pid)] = [os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime]

    for argv, cwd, log, edits in requests:
        while len(running) >= (1 if edits else 2):  # a run with edited files runs alone: the files are shared
            reap()
        kept = {path: (Path(path).read_bytes(), os.stat(path)) for path in edits}
        for path, text in edits.items():
            Path(path).write_text(text)  # edited in place, as a user would (a newer mtime)
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
        if edits:
            reap()
            for path, (data, st) in kept.items():
                Path(path).write_bytes(data)
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    while running:
        reap()
    own = resource.getrusage(resource.RUSAGE_SELF)
    codes["(server)"] = [0, own.ru_utime + own.ru_stime]  # its imports and the code hashing, once
    json.dump(codes, sys.stdout)


def dry_runs(workdir: Path, runs: dict[str, list[str]],
             edits: dict[str, dict[str, str]] | None = None) -> tuple[dict[str, dict[str, int] | str], float]:
    """Name -> jobs per rule of a dry run with these extra arguments (each run's log in workdir/matrix/), or
    the end of its log when it failed; and the CPU seconds the dry runs took. `edits`: name -> {path: text}
    written in place for that dry run alone, then restored (content and mtime)."""
    logs = workdir / "matrix"
    logs.mkdir(exist_ok=True)
    base = ["--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2", "--nolock",
            "-n", "--quiet", "rules"]
    requests = [[[*base, *args], str(workdir), str(logs / f"{_safe(name)}.log"), (edits or {}).get(name, {})]
                for name, args in runs.items()]
    serve = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_rerun_matrix as m; m._serve()"
    proc = subprocess.run([sys.executable, "-c", serve], input=json.dumps(requests), capture_output=True, text=True,
                          cwd=workdir)
    assert proc.returncode == 0, f"the dry-run server failed:\n{proc.stderr[-3000:]}"
    codes = json.loads(proc.stdout)
    out = {}
    for name, (_, _, log, _) in zip(runs, requests):
        text = Path(log).read_text()
        out[name] = jobs_of(text) if codes[log][0] == 0 else f"dry run failed ({log}): {text[-1500:]}"
    return out, sum(cpu for _, cpu in codes.values())


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


def by_family(jobs: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for rule, n in jobs.items():
        out[family(rule)] = out.get(family(rule), 0) + n
    return out


def forced(workdir: Path, first: list[str]) -> list[str]:
    """--forcerun targets: the finished run's outputs matching the globs."""
    out = []
    for pattern in first:
        found = sorted(str(p.relative_to(workdir)) for p in workdir.glob(pattern))
        assert found, f"{pattern!r} names no output of the finished run {workdir}"
        out += found
    return out


def difference(key: str, value, want: dict[str, int], got: dict[str, int]) -> str:
    more = {r: n - want.get(r, 0) for r, n in got.items() if n > want.get(r, 0)}
    less = {r: n - got.get(r, 0) for r, n in want.items() if n > got.get(r, 0)}
    return (f"{key} = {value!r}: planned jobs differ from the stages that read it and their descendants; "
            f"wasteful (planned, not expected): {more}; stale (expected, not planned): {less}")


def check_matrix(workdir: Path, rows: dict[str, tuple[object, list[str]]],
                 structural: dict[str, tuple[object, dict[str, int]]], no_change: dict[str, object],
                 sheets: dict[str, tuple[str, dict[str, int]]] | None = None,
                 rejected: dict[str, tuple[object, str]] | None = None) -> list[str]:
    """Dry-run every row on the finished run in `workdir` (one batch: the changed configs, and per set of
    first jobs a --forcerun of them on the unchanged config); returns the rows that failed, one line each."""
    started = time.monotonic()
    rejected = rejected or {}
    config = workdir / "config.yaml"
    base = yaml.safe_load(config.read_text())
    configs = workdir / "matrix"
    configs.mkdir(exist_ok=True)
    (workdir / "weights.pt").touch()  # what `weights:` rows point at (a dry run reads no weights)

    def changed(key: str, cfg: dict) -> list[str]:
        path = configs / f"{_safe(key)}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return ["--configfile", str(path)]

    runs = {"(unchanged)": ["--configfile", str(config)]}
    for key, value in [*((k, v) for k, (v, _) in {**rows, **structural, **rejected}.items()), *no_change.items()]:
        runs[key] = changed(key, set_key(base, key, value))
    edits = {}
    for name, (text, _) in (sheets or {}).items():  # the sheet edited in place (its path is a param)
        runs[name] = ["--configfile", str(config)]
        edits[name] = {str(workdir / base["samples"]): text}
    for first in {tuple(first) for _, first in rows.values()}:
        runs["forcerun " + " ".join(first)] = ["--configfile", str(config), "--forcerun", *forced(workdir, list(first))]
    planned, cpu = dry_runs(workdir, runs, edits)
    assert planned["(unchanged)"] == {}, f"the finished run is not finished: {planned['(unchanged)']}"
    failures = [f"{key}: {got}" for key, got in planned.items()
                if isinstance(got, str) and not (key in rejected and rejected[key][1] in got)]
    failures += [f"{key} = {value!r}: planned {planned[key]}, expected the error {message!r}"
                 for key, (value, message) in rejected.items() if message not in str(planned[key])]
    planned = {k: v for k, v in planned.items() if isinstance(v, dict)}  # the failed ones are reported
    for key, (value, first) in rows.items():
        want = planned.get("forcerun " + " ".join(first))
        if key in planned and want is not None and planned[key] != want:
            failures.append(difference(key, value, want, planned[key]))
    for key, (value, want) in {**structural, **{k: (None, w) for k, (_, w) in (sheets or {}).items()}}.items():
        got = by_family(planned.get(key, {}))
        if key in planned and got != want:
            failures.append(difference(key, value, want, got))
    for key, value in no_change.items():
        if planned.get(key):
            failures.append(f"{key} = {value!r}: expected nothing, planned {planned[key]}")
    print(f"rerun matrix {workdir.name}: {len(runs)} dry runs in {time.monotonic() - started:.0f} s wall, "
          f"{cpu:.0f} s CPU")
    return failures


# --- the finished runs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort_run(finished_run, tmp_path_factory) -> Path:
    """A copy of `finished_run` (mtimes and metadata kept) made a researcher's cohort: its own sheet (the
    demo's slides, their tumour outlines in the sheet's `annotation` column, demo off), one seed, and one
    short round of hard-negative mining per fold; finished."""
    run = tmp_path_factory.mktemp("cohort") / "wf"
    shutil.copytree(finished_run, run, symlinks=True)
    shutil.rmtree(run / "matrix", ignore_errors=True)
    sheet = (run / "samples.tsv").read_text().splitlines()
    rows = [sheet[0] + "\tannotation"] + [f"{r}\tresults/demo/annotations/{r.split()[0]}.geojson" for r in sheet[1:]]
    (run / "samples.tsv").write_text("\n".join(rows) + "\n")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["demo"]["enabled"] = False
    cfg["seeds"] = [0]
    cfg["hnm"]["simclr-hnm"].update(enabled=True, rounds=1, epochs=1, warmup_epochs=0, batch_size=16,
                                    tiles_per_epoch=32, mil={"epochs": 2})
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(run)
    return run


def sheet_edits(workdir: Path) -> dict[str, str]:
    """Edits of the cohort's sheet (its text): a slide added (a copy of t0's file), one dropped, one
    relabelled, one's path fixed (its file moved elsewhere, the same pixels)."""
    header, *rows = (workdir / "samples.tsv").read_text().splitlines()
    cells = [r.split("\t") for r in rows]
    extra = workdir / "extra"
    extra.mkdir(exist_ok=True)
    new = shutil.copy(workdir / cells[0][1], extra / "t_new.tiff")
    moved = shutil.copy2(workdir / cells[1][1], extra / "t1.tiff")
    edits = {
        "add a slide": [*cells, ["t_new", str(new), cells[0][2], "P_new", cells[0][4]]],
        "drop a slide": cells[:-1],
        "relabel a slide": [[c[0], c[1], "tumour" if c[2] == "normal" else "normal", *c[3:]] if i == 0 else c
                            for i, c in enumerate(cells)],
        "fix a slide's path": [[c[0], str(moved), *c[2:]] if i == 1 else c for i, c in enumerate(cells)],
    }
    return {name: "\n".join([header, *("\t".join(c) for c in edited)]) + "\n" for name, edited in edits.items()}


def test_every_config_key_has_a_row():
    """A new config key is a new row: the stages that read it (ROWS, MINING_ROWS), the DAG it reshapes
    (STRUCTURAL, MINING_STRUCTURAL), or none (NO_CHANGE, MINING_NO_CHANGE)."""
    with tempfile.TemporaryDirectory() as d:
        cfg = yaml.safe_load(_tiny_config(Path(d)).read_text())
    rows = [*ROWS, *STRUCTURAL, *NO_CHANGE, *REJECTED, *MINING_ROWS, *MINING_STRUCTURAL, *MINING_NO_CHANGE, *SHEET_KEYS]
    assert len(rows) == len(set(rows)), sorted(k for k in rows if rows.count(k) > 1)
    missing = [k for k in config_keys(cfg) if k not in rows]
    assert not missing, f"config keys without a row in tests/test_rerun_matrix.py: {missing}"



@pytest.mark.e2e
def test_rerun_matrix(finished_run):
    """Each key, changed alone on the finished run, plans exactly what the table says."""
    failures = check_matrix(finished_run, ROWS, STRUCTURAL, NO_CHANGE, rejected=REJECTED)
    assert not failures, "\n".join(failures)


@pytest.mark.e2e
def test_rerun_matrix_of_mining_keys_and_sheet_edits(cohort_run):
    """The mining run's keys and the sheet's edits, on a researcher's cohort with a finished round."""
    sheets = {name: (text, SHEET_EDITS.get(name, {})) for name, text in sheet_edits(cohort_run).items()}
    failures = check_matrix(cohort_run, MINING_ROWS, MINING_STRUCTURAL, MINING_NO_CHANGE, sheets)
    assert not failures, "\n".join(failures)
