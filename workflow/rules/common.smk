# Sample sheet, config validation and input helpers shared by every rule file.
import dataclasses
import functools
import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate
from snakemake_interface_executor_plugins.settings import DeploymentMethod

SRC = Path(workflow.current_basedir).parents[1] / "src"
sys.path.insert(0, str(SRC))  # the sheet checks below are slidemil's own (src/slidemil/cohorts/sheet.py)
from slidemil.plan.codeversion import code_version as _code_version  # noqa: E402
from slidemil.plan.jobs import slide_batches  # noqa: E402
from slidemil.cohorts.sheet import DEMO_MIMIC, DEMO_SLIDES, DEMO_TUMOUR, annotation_table, check_sheet, read_sheet  # noqa: E402
from slidemil.config import with_defaults  # noqa: E402
from slidemil.plan.catalogue import build_catalogue, round_encoder  # noqa: E402

validate(config, schema="../schemas/config.schema.yaml")  # types and ranges; the dataclasses give the defaults
config.update(with_defaults(config))  # every key present, as the rules pass whole blocks
CATALOGUE = build_catalogue(config)  # encoders, scopes, mining rounds, the MIL grid: checked against the registries
MIL_RUNS = {run: json.dumps(r.params(), sort_keys=True) for run, r in CATALOGUE.mil_runs.items()}  # the mil rule's --params

SAMPLES = read_sheet(config["samples"])
validate(SAMPLES, schema="../schemas/samples.schema.yaml")
# demo slides are made by rule demo_slide, so their paths need not exist yet
_generated = {DEMO_SLIDES.format(slide=s) for s in SAMPLES["slide_id"]} if config["demo"]["enabled"] else set()
check_sheet(SAMPLES, config["classes"], config["samples"], will_exist=_generated)
SAMPLES = SAMPLES.set_index("slide_id", drop=False)
SLIDES = list(SAMPLES.index)
# per-job lookups read dicts, not SAMPLES.loc (tens of microseconds per call, times every slide's jobs)
SLIDE_PATHS = dict(zip(SLIDES, SAMPLES["path"]))
SLIDE_MPP = {s: float(m) for s, m in zip(SLIDES, SAMPLES["mpp"]) if m == m} if "mpp" in SAMPLES.columns else {}
SLIDE_LABELS = dict(zip(SLIDES, SAMPLES["label"]))
ANNOTATION_TABLE = annotation_table(SAMPLES, config["demo"]["enabled"])  # tumour and mimic outlines per slide
ANNOTATIONS = "results/annotations.json"  # the same table, for the jobs (rule annotations_index)
ENCODERS = CATALOGUE.encoders  # embedded once: frozen entries and label-free pretrained ones (scope all)
N_FOLDS = CATALOGUE.n_folds
PRETRAIN = CATALOGUE.pretrain  # pretrained encoders, results/encoders/{name}/{scope}/encoder.pt
PRETRAIN_SCOPES = CATALOGUE.pretrain_scopes
# Fold-trained encoders (label-using pretraining, mining rounds): features per fold,
# results/features/{encoder}/fold{k}/{slide}.zarr. Round t of mining run R is R-r{t} (workflow/rules/hnm.smk).
FOLD_ENCODERS = CATALOGUE.fold_encoders
HNM = CATALOGUE.hnm
HNM_ROUNDS = CATALOGUE.hnm_rounds  # encoder name -> (run, round)
ALL_ENCODERS = CATALOGUE.all_encoders  # every encoder of the benchmark
MIL_GRID = CATALOGUE.mil_grid  # MIL run -> the encoders it is trained on
EMBED_PER_JOB = config["embed"]["slides_per_job"]
EMBED_BATCHES = slide_batches(SLIDES, EMBED_PER_JOB)
GRAPH_BATCHES = slide_batches(SLIDES, config["graph"]["slides_per_job"])
TILE_BATCHES = slide_batches(SLIDES, config["tile"]["slides_per_job"])
TILE_PARAMS = dataclasses.asdict(CATALOGUE.config.tile.params())  # batching changes no tile


wildcard_constraints:
    # the sheet schema's id pattern, not an alternation of every id: planning stays linear in slides
    slide=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    encoder="|".join(ALL_ENCODERS),
    model="[A-Za-z0-9_]+",
    fold=r"\d+",
    seed=r"\d+",


# Rule commands run `python -m slidemil` from this checkout's src/ (which `code_version` hashes),
# with Snakemake's own interpreter first on PATH unless --sdm conda activates a rule's env.
_env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    _env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
os.environ.update(_env)


def as_arg(obj) -> str:
    """A config block as one shell-quoted JSON argument; as a param it also triggers reruns."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


@functools.cache  # once per stage and run: batch rules would otherwise parse the package per rule
def code_version(*roots: str) -> str:
    """Hash of the import closure of a stage's modules: Snakemake does not see imported code changing."""
    return _code_version(SRC / "slidemil", *roots)


def tile_batch_arg(slides: list[str]) -> str:
    """One tile job's slides as a shell-quoted JSON {id: {path, mpp}}; the sheet's mpp is used only
    when the slide's metadata lacks one."""
    return as_arg({s: {"path": SLIDE_PATHS[s], "mpp": SLIDE_MPP.get(s)} for s in slides})


def demo_positive(wildcards) -> int:
    return int(SLIDE_LABELS[wildcards.slide] != config["classes"][0])


def encoder_arg(wildcards) -> str:
    return encoder_block(wildcards.encoder)


def encoder_block(encoder: str) -> str:
    """An encoder's entry, every field filled in, as the embed job's --encoder."""
    return as_arg(dataclasses.asdict(ENCODERS[encoder]))


SEEDS = CATALOGUE.seeds


def all_predictions() -> list[str]:
    return [f"results/mil/{encoder}/{model}/fold{fold}/seed{seed}/predictions.csv"
            for model, encoders in MIL_GRID.items() for encoder in encoders
            for fold in range(N_FOLDS) for seed in SEEDS]


def export_inputs(wildcards) -> dict[str, str]:
    """The tile store, plus the feature store of config `export.encoder` when one is named."""
    inputs = {"tiles": f"results/tiles/{wildcards.slide}.zarr"}
    encoder = config["export"]["encoder"]
    if encoder:
        if encoder not in ENCODERS:
            raise ValueError(f"config export.encoder {encoder!r} is not one of the encoders {sorted(ENCODERS)}")
        inputs["features"] = f"results/features/{encoder}/{wildcards.slide}.zarr"
    return inputs


def export_features_arg(wildcards, input) -> str:
    return f"--features {shlex.quote(str(input.features))}" if "features" in input.keys() else ""


def heatmap_predictions(wildcards) -> list[str]:
    """The first seed's run of every fold: heatmaps show one trained model per test slide."""
    return expand("results/mil/{encoder}/{model}/fold{fold}/seed{seed}/predictions.csv", encoder=wildcards.encoder,
                  model=wildcards.model, fold=range(N_FOLDS), seed=SEEDS[0])


def heatmap_features(wildcards) -> list[str]:
    """The feature indexes (stand-ins for every store) the heatmaps of (encoder, model) read: per fold
    for fold-trained encoders."""
    return sorted({features_index(wildcards.encoder, k) for k in range(N_FOLDS)})


def heatmap_features_dir(wildcards) -> str:
    """Feature folder for the heatmaps CLI; "{fold}" is filled in per run for fold-trained encoders."""
    return encoder_features_dir(wildcards.encoder, "{fold}")


def heatmap_fold_dirs(wildcards) -> str:
    return " ".join(str(Path(p).parent) for p in heatmap_predictions(wildcards))


def all_outputs() -> list[str]:
    probe = ["results/probe.csv"] if ANNOTATION_TABLE["tumour"] else []  # needs tumour annotations
    return ["results/benchmark.csv", QC_TABLE, *probe,
            *(f"results/heatmaps/{encoder}/{model}/instance_metrics.csv"
              for model, encoders in MIL_GRID.items() for encoder in encoders),
            GRAPHS_INDEX]  # every graph, through its index: one edge, not one per slide


# --- encoders and pretraining (workflow/rules/embed.smk, pretrain.smk) ---


def weights_of(encoder: str) -> list[str]:
    """An encoder's weights file, a declared input of embed (replacing it reruns embedding); [] = random init."""
    weights = ENCODERS[encoder].weights
    return [weights] if weights else []


def encoder_weights(wildcards) -> list[str]:
    return weights_of(wildcards.encoder)


def embed_batch_rule(encoder: str, batch: int) -> str:
    """embed_b{batch}_{encoder as a word}: the name of one encoder's embedding job for one batch."""
    word = re.sub(r"\W", "_", encoder)  # encoder names may hold "-" and "."
    return f"embed_b{batch}_{word}"


def weights_flag(wildcards, input) -> str:
    return f"--weights {shlex.quote(str(input.weights[0]))}" if input.weights else ""  # [] or [file]


def fold_encoder_arg(wildcards) -> str:
    return fold_encoder_block(wildcards.encoder, wildcards.fold)


def fold_encoder_block(encoder: str, fold) -> str:
    return as_arg(dataclasses.asdict(CATALOGUE.fold_encoder(encoder, fold)))


def pretrain_inputs(wildcards) -> dict:
    """The QC table and the graphs' index, standing in for every tile store and graph (the CLI finds those
    from the sheet and keeps the scope's slides), folds for fold scopes. Listing every store here made
    planning quadratic: Snakemake checks each requested file against its producer's inputs, and each of
    the n/8 embed batches requests this job's encoder.pt."""
    if wildcards.scope not in PRETRAIN_SCOPES[wildcards.encoder]:
        raise ValueError(f"pretrain {wildcards.encoder}: scope {wildcards.scope} is not one of "
                         f"{PRETRAIN_SCOPES[wildcards.encoder]}")
    inputs = {"tiles": QC_TABLE, "samples": config["samples"],
              "graphs": GRAPHS_INDEX if CATALOGUE.needs_graphs(wildcards.encoder) else []}
    if wildcards.scope != "all":
        inputs["folds"] = "results/folds.csv"
    return inputs


def pretrain_graphs_flag(wildcards) -> str:
    """Spatial and mixed samplers read the neighbour graphs (results/graphs/{slide}.npz)."""
    return "--graphs-dir results/graphs" if CATALOGUE.needs_graphs(wildcards.encoder) else ""


def pretrain_arg(wildcards) -> str:
    return as_arg(dataclasses.asdict(PRETRAIN[wildcards.encoder]))


def pretrain_gpus(wildcards) -> int:
    return PRETRAIN[wildcards.encoder].gpus


def pretrain_launcher(wildcards) -> str:
    """`python -m slidemil`, or torchrun with one process per GPU when the entry asks for several."""
    n = PRETRAIN[wildcards.encoder].gpus
    return f"torchrun --standalone --nproc_per_node {n} -m slidemil" if n > 1 else "python -m slidemil"


def pretrain_folds_flag(wildcards, input) -> str:
    return f"--folds {shlex.quote(str(input.folds))}" if "folds" in input.keys() else ""


def encoder_features_dir(encoder: str, fold) -> str:
    """results/features/{encoder}, or .../fold{k} for an encoder trained on fold k's training slides."""
    per_fold = [f"fold{fold}"] if encoder in FOLD_ENCODERS else []
    return str(Path("results", "features", encoder, *per_fold))


def features_dir(wildcards) -> str:
    """Feature folder of a MIL job (encoder, fold)."""
    return encoder_features_dir(wildcards.encoder, wildcards.fold)


# Jobs that read every slide take one index per feature folder (rules features_index*), not n stores:
# 48 MIL jobs x 2 stores per slide were most of the DAG's edges and of its planning time.
GRAPHS_INDEX = "results/graphs/index.tsv"
QC_TABLE = "results/qc/cohort.tsv"  # written from every tile store and mask: stands in for them as an input


def features_index(encoder: str, fold) -> str:
    """{features dir}/index.tsv: written from every store of the folder, so newer stores rerun its readers."""
    return f"{encoder_features_dir(encoder, fold)}/index.tsv"


def mil_features(wildcards) -> str:
    """The feature index of a MIL job (encoder, fold), in its encoder's scope."""
    return features_index(wildcards.encoder, wildcards.fold)


def index_feature_stores(wildcards) -> list[str]:
    """Every slide's feature store of an index's folder (encoder, and fold for fold-trained encoders)."""
    return list(feature_stores(encoder_features_dir(wildcards.encoder, wildcards.get("fold"))))


@functools.cache
def feature_stores(features_dir: str) -> list[str]:
    return [f"{features_dir}/{slide}.zarr" for slide in SLIDES]


# --- hard-negative mining (workflow/rules/hnm.smk) ---


def hnm_arg(wildcards) -> str:
    """The run's params without `rounds`/`enabled`: raising `rounds` leaves finished rounds as they are."""
    return as_arg(HNM[wildcards.run].round_params())


def hnm_previous_encoder(wildcards) -> str:
    t = int(wildcards.round)
    return HNM[wildcards.run].base if t == 1 else round_encoder(wildcards.run, t - 1)


def hnm_round_dir(run: str, fold, t: int) -> str:
    return f"results/hnm/{run}/fold{fold}/round{t}"


def hnm_features_dir(wildcards) -> str:
    return encoder_features_dir(hnm_previous_encoder(wildcards), wildcards.fold)


def hnm_mine_inputs(wildcards) -> dict:
    """The round-(t-1) features' index (the CLI reads the fold's training and validation
    slides), the folds, the sheet, and round t-1's gate and pseudo labels (the gate's reference)."""
    inputs = {"features": f"{hnm_features_dir(wildcards)}/index.tsv",  # stands in for every store
              "folds": "results/folds.csv", "samples": config["samples"]}
    t = int(wildcards.round)
    if t > 1:
        prev = hnm_round_dir(wildcards.run, wildcards.fold, t - 1)
        inputs["previous"] = [f"{prev}/gate.json", f"{prev}/pseudo_labels.npz"]
    return inputs


def hnm_previous_flag(wildcards) -> str:
    t = int(wildcards.round)
    return f"--previous {shlex.quote(hnm_round_dir(wildcards.run, wildcards.fold, t - 1))}" if t > 1 else ""


def hnm_init_weights(wildcards) -> list[str]:
    """Round t-1's encoder.pt ([] when round 0 is a seeded random init)."""
    t = int(wildcards.round)
    if t > 1:
        return [f"results/encoders/{round_encoder(wildcards.run, t - 1)}/fold{wildcards.fold}/encoder.pt"]
    weights = CATALOGUE.hnm_base(wildcards.run, wildcards.fold).weights
    return [weights] if weights else []


def hnm_init_flag(wildcards, input) -> str:
    return f"--init {shlex.quote(str(input.init[0]))}" if input.init else ""


def hnm_base_arg(wildcards) -> str:
    return as_arg(dataclasses.asdict(CATALOGUE.hnm_base(wildcards.run, wildcards.fold)))


def hnm_run_rounds(wildcards) -> list[str]:
    """Every round dir of a run: results/hnm/{run}/fold{k}/round{t}."""
    return [hnm_round_dir(wildcards.run, k, t) for k in range(N_FOLDS) for t in range(1, HNM[wildcards.run].rounds + 1)]


def hnm_mining_inputs(wildcards) -> dict:
    rounds = hnm_run_rounds(wildcards)
    return {"gates": [f"{d}/gate.json" for d in rounds], "labels": [f"{d}/pseudo_labels.npz" for d in rounds],
            "tiles": QC_TABLE, "samples": config["samples"],
            "annotations": ANNOTATIONS, "mimics": list(ANNOTATION_TABLE["mimic"].values())}


def hnm_rounds_arg(wildcards) -> str:
    return " ".join(shlex.quote(d) for d in hnm_run_rounds(wildcards))


def hnm_outputs() -> list[str]:
    return expand("results/hnm/{run}/mining.csv", run=HNM)
