"""Command line: one subcommand per workflow stage, one slide (or fold) per call, explicit paths.

Rules call `python -m slidemil <stage> ...`; a stage's config block arrives as `--params JSON`.
Errors that users can fix (a bad slide, a bad sheet) print one line and exit 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _json(text: str) -> dict:
    return json.loads(text) if text else {}


def _block(cls, text: str, block: str):
    """Config block `block` as its dataclass (slidemil.config): strict, the dataclass's defaults for missing keys."""
    from slidemil.config import from_block

    return from_block(cls, _json(text), block)


def cmd_demo_slide(a: argparse.Namespace) -> None:
    from slidemil.cohorts.demo import DemoSlideSpec, make_demo_slide
    from slidemil.config import DemoConfig

    d = _block(DemoConfig, a.params, "demo")
    spec = DemoSlideSpec(width=d.width, height=d.height, mpp=d.mpp)
    make_demo_slide(a.slide_id, a.positive, a.seed, Path(a.out), Path(a.annotation), spec)


def cmd_mask(a: argparse.Namespace) -> None:
    from slidemil.config import MaskConfig
    from slidemil.slides.tissue import mask_slide_or_flag

    mask = _block(MaskConfig, a.params, "mask")  # the tissue thresholds and mask_mpp
    mask_slide_or_flag(a.slide, a.slide_id, a.out, a.qc, mask, mask_mpp=mask.mask_mpp, mpp_override=a.mpp,
                       on_error=a.on_slide_error)


def cmd_tile(a: argparse.Namespace) -> None:
    from slidemil.slides.tiling import TileParams, tile_slide_or_flag

    params = _block(TileParams, a.params, "tile")
    tile_slide_or_flag(a.slide, a.slide_id, a.mask, a.mask_qc, a.out, a.qc, params, a.mpp, threads=a.threads,
                       on_error=a.on_slide_error)


def cmd_preprocess(a: argparse.Namespace) -> None:
    from slidemil.config import MaskConfig
    from slidemil.slides.tiling import TileParams, preprocess_batch

    mask = _block(MaskConfig, a.mask_params, "mask")
    preprocess_batch(_json(a.slides), a.masks_dir, a.mask_qc_dir, a.tiles_dir, a.qc_dir, mask, mask.mask_mpp,
                     _block(TileParams, a.params, "tile"), threads=a.threads, on_error=a.on_slide_error)


def cmd_graph(a: argparse.Namespace) -> None:
    from slidemil.slides.graph import graphs_of_stores

    graphs_of_stores(a.tiles, a.out, a.radius)


def cmd_features_index(a: argparse.Namespace) -> None:
    from slidemil.plan.indexes import write_index

    write_index("features", a.features_dir, a.samples, a.out)


def cmd_graphs_index(a: argparse.Namespace) -> None:
    from slidemil.plan.indexes import write_index

    write_index("graphs", a.graphs_dir, a.samples, a.out)


def cmd_annotations_index(a: argparse.Namespace) -> None:
    from slidemil.cohorts.sheet import write_annotation_table

    write_annotation_table(a.samples, a.demo, a.out)


def cmd_embed(a: argparse.Namespace) -> None:
    from slidemil.config import EncoderSpec
    from slidemil.encoders.job import embed_job

    embed_job(_block(EncoderSpec, a.encoder, "encoders"), a.weights, a.tiles, a.out, a.seed, a.device, a.threads)


def cmd_pretrain(a: argparse.Namespace) -> None:
    from slidemil.ssl.job import pretrain_job

    pretrain_job(_json(a.params), a.scope, a.tiles_dir, a.samples, json.loads(a.classes), a.out, a.seed, a.device,
                 a.threads, graphs_dir=a.graphs_dir, folds=a.folds)


def cmd_qc(a: argparse.Namespace) -> None:
    from slidemil.slides.qc import write_cohort_qc
    from slidemil.cohorts.sheet import slide_paths

    write_cohort_qc(slide_paths(a.tiles_dir, a.samples, ".zarr"), slide_paths(a.masks_dir, a.samples, ".json"),
                    a.out, a.plot)


def cmd_export_h5(a: argparse.Namespace) -> None:
    from slidemil.slides.export import export_h5

    export_h5(a.tiles, a.out, a.features)


def cmd_folds(a: argparse.Namespace) -> None:
    from slidemil.cohorts.folds import write_folds
    from slidemil.config import EvaluateConfig

    e = _block(EvaluateConfig, a.params, "evaluate")  # the fold keys of config `evaluate`
    write_folds(a.samples, a.out, e.n_folds, a.seed, e.val_fraction, e.use_official_split)


def cmd_mil(a: argparse.Namespace) -> None:
    from slidemil.mil.job import mil_job

    mil_job(a.model, _json(a.params), a.features_dir, a.folds, a.samples, a.fold, json.loads(a.classes), a.out_dir,
            a.seed, a.threads, graphs_dir=a.graphs_dir, cache_mb=a.cache_mb)


def cmd_hnm_mine(a: argparse.Namespace) -> None:
    from slidemil.hnm.job import mine_job

    mine_job(_json(a.params), a.features_dir, a.folds, a.samples, a.fold, a.round, json.loads(a.classes), a.out_dir,
             a.seed, a.device, a.threads, previous_dir=a.previous)


def cmd_hnm_finetune(a: argparse.Namespace) -> None:
    from slidemil.hnm.job import finetune_job

    finetune_job(_json(a.params), a.tiles_dir, a.samples, a.pseudo_labels, _json(a.base), a.init, a.out, a.seed,
                 a.device, a.threads)


def cmd_hnm_mining(a: argparse.Namespace) -> None:
    from slidemil.hnm.job import evidence_job

    evidence_job(_json(a.params), a.rounds, a.tiles_dir, a.samples, a.annotations, a.out)


def cmd_evaluate(a: argparse.Namespace) -> None:
    from slidemil.evaluate.benchmark import parse_run_path, write_evaluation

    runs = [parse_run_path(pred) for pred in a.predictions]  # .../{encoder}/{model}/fold{k}/seed{s}/...
    out = {"table": a.out, "runs": a.runs_out or str(Path(a.out).with_name(Path(a.out).stem + "_runs.csv")),
           "plot": a.plot, "comparisons": a.comparisons, "claims": a.claims}
    write_evaluation(runs, json.loads(a.classes), out, params=_json(a.params), encoders=_json(a.encoders),
                     models=_json(a.models), pretrain=_json(a.pretrain), n_boot=a.bootstrap, seed=a.seed)


def cmd_probe(a: argparse.Namespace) -> None:
    from slidemil.evaluate.job import probe_job

    probe_job(a.encoder, a.features_dir, a.folds, a.samples, json.loads(a.classes), a.annotations, a.out, a.seed,
              a.bootstrap)


def cmd_probe_table(a: argparse.Namespace) -> None:
    from slidemil.evaluate.probe import write_probe_table

    write_probe_table(a.rows, a.out)


def cmd_heatmaps(a: argparse.Namespace) -> None:
    from slidemil.config import FrocParams
    from slidemil.evaluate.job import heatmaps_job

    froc = _block(FrocParams, a.froc, "evaluate.froc")
    heatmaps_job(a.folds, a.features_dir, a.samples, a.annotations, a.out_dir, a.png_per_fold, froc, title=a.title)



def add_run_args(p: argparse.ArgumentParser) -> None:
    """--seed, --device and --threads, as every stage that runs a network takes them."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)


def add_on_error(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on-slide-error", choices=("skip", "fail"), default="fail",
                   help="skip: log one ERROR line and write outputs flagged failed (exit 0); fail: exit 1")


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1, help="shards tiled in parallel (the rule's threads)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="slidemil", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def add(name, fn, help_):
        p = sub.add_parser(name, help=help_)
        p.set_defaults(fn=fn)
        return p

    p = add("demo-slide", cmd_demo_slide, "render one synthetic demo slide + tumour GeoJSON")
    p.add_argument("--slide-id", required=True)
    p.add_argument("--positive", type=int, choices=(0, 1), required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--params", default="{}")
    p.add_argument("--out", required=True)
    p.add_argument("--annotation", required=True)

    for name, fn, help_ in (("mask", cmd_mask, "tissue mask + QC overlay of one slide"),
                            ("tile", cmd_tile, "tile one slide into a Zarr store")):
        p = add(name, fn, help_)
        p.add_argument("--slide", required=True)
        p.add_argument("--slide-id", required=True)
        p.add_argument("--mpp", type=float, default=None, help="mpp when the slide metadata lacks it")
        p.add_argument("--params", default="{}")
        p.add_argument("--out", required=True)
        p.add_argument("--qc", required=True, help="QC PNG to write")
        add_on_error(p)
        if name == "tile":
            p.add_argument("--mask", required=True, help="the tissue mask PNG")
            p.add_argument("--mask-qc", required=True, help="the mask stage's QC PNG (background picture)")
            add_threads(p)

    p = add("preprocess", cmd_preprocess, "mask, then tile, each slide of a batch (the workflow's tile job)")
    p.add_argument("--slides", required=True, help='JSON {slide_id: {"path": file, "mpp": float or null}}')
    p.add_argument("--mask-params", default="{}", help="JSON of config `mask`")
    p.add_argument("--params", default="{}", help="JSON of config `tile`")
    for d, what in (("masks", "masks <id>.png + .json"), ("mask-qc", "mask QC <id>.png"),
                    ("tiles", "tile stores <id>.zarr"), ("qc", "tile QC <id>.png")):
        p.add_argument(f"--{d}-dir", required=True, help=what)
    add_on_error(p)
    add_threads(p)

    p = add("graph", cmd_graph, "neighbour graphs of tile stores")
    p.add_argument("--tiles", nargs="+", required=True, help="tile stores, one per slide")
    p.add_argument("--radius", type=int, required=True, help="config graph.radius")
    p.add_argument("--out", nargs="+", required=True, help="graphs (.npz), in the order of --tiles")

    p = add("embed", cmd_embed, "embed one tile store with a frozen encoder")
    p.add_argument("--tiles", nargs="+", required=True, help="tile stores, one per slide")
    p.add_argument("--encoder", required=True, help="JSON of one config `encoders` entry")
    p.add_argument("--weights", default=None, help="weights file (overrides the entry's `weights`)")
    add_run_args(p)
    p.add_argument("--out", nargs="+", required=True, help="feature stores, in the order of --tiles")

    # the sheet names the slides: n store paths on one command line would pass Linux's 128 KiB per argument
    p = add("features-index", cmd_features_index, "index.tsv of one feature folder (slide_id, n_tiles, status, reason)")
    p.add_argument("--features-dir", required=True, help="results/features/{encoder}[/fold{k}]")
    p.add_argument("--samples", required=True, help="sample sheet: one row per slide_id, in its order")
    p.add_argument("--out", required=True, help="{features-dir}/index.tsv")
    p = add("graphs-index", cmd_graphs_index, "index.tsv of the neighbour graphs (slide_id, n_tiles, n_edges)")
    p.add_argument("--graphs-dir", required=True, help="results/graphs")
    p.add_argument("--samples", required=True, help="sample sheet: one row per slide_id, in its order")
    p.add_argument("--out", required=True, help="results/graphs/index.tsv")
    p = add("annotations-index", cmd_annotations_index, "annotations.json: tumour and mimic outlines per slide")
    p.add_argument("--samples", required=True, help="sample sheet (its optional `annotation` column)")
    p.add_argument("--demo", action="store_true", help="the demo generates the sheet's slides and their outlines")
    p.add_argument("--out", required=True, help="results/annotations.json")

    p = add("pretrain", cmd_pretrain, "pretrain one encoder (config `pretrain` entry) in one scope")
    p.add_argument("--params", required=True, help="JSON of one config `pretrain` entry")
    p.add_argument("--scope", required=True, help="all | fold<k> (fold k's training slides only)")
    p.add_argument("--tiles-dir", required=True, help="results/tiles: {slide}.zarr of every slide of --samples")
    p.add_argument("--graphs-dir", default=None, help="results/graphs: {slide}.npz (spatial and mixed samplers)")
    p.add_argument("--folds", default=None, help="results/folds.csv (needed for fold scopes)")
    p.add_argument("--samples", required=True, help="sample sheet: the slides, and labels for label-using objectives")
    p.add_argument("--classes", default="[]", help="JSON list of class names; the first is negative")
    add_run_args(p)
    p.add_argument("--out", required=True, help="results/encoders/{encoder}/{scope}/encoder.pt")
    p = add("qc", cmd_qc, "cohort QC table from tile stores and mask sidecars")
    p.add_argument("--tiles-dir", required=True, help="results/tiles: {slide}.zarr of every slide of --samples")
    p.add_argument("--masks-dir", required=True, help="results/masks: {slide}.json of every slide of --samples")
    p.add_argument("--samples", required=True, help="sample sheet: the slides, in its order")
    p.add_argument("--out", required=True)
    p.add_argument("--plot", default=None, help="cohort QC plot (PNG): tiles per slide coloured by status")
    p = add("export-h5", cmd_export_h5, "CLAM/TRIDENT-style HDF5 (coords [+ features]) of one tile store")
    p.add_argument("--tiles", required=True)
    p.add_argument("--features", default=None, help="feature store of the same slide to include")
    p.add_argument("--out", required=True)
    p = add("folds", cmd_folds, "patient-level stratified folds (or the official split)")
    p.add_argument("--samples", required=True)
    p.add_argument("--params", default="{}", help="JSON of config `evaluate`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)

    p = add("mil", cmd_mil, "train and predict one MIL model on one fold")
    p.add_argument("--features-dir", required=True)
    p.add_argument("--folds", required=True)
    p.add_argument("--samples", required=True)
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--params", default="{}",
                   help="JSON of this model's run params (slidemil.mil.params.run_params), or of config `mil`")
    p.add_argument("--classes", required=True, help="JSON list of class names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--graphs-dir", default=None, help="results/graphs: neighbour graphs {slide}.npz (SRMIL)")
    p.add_argument("--cache-mb", type=float, required=True, help="config mil.cache_mb: features kept in memory "
                   "across epochs; the rest is re-read from the stores")

    p = add("heatmaps", cmd_heatmaps, "a model's evidence on its test slides: heatmaps, QuPath GeoJSON, "
            "instance AUC and lesion FROC vs annotations, training curves")
    p.add_argument("--folds", nargs="+", required=True,
                   help="MIL run dirs, results/mil/{encoder}/{model}/fold{k}[/seed{s}]")
    p.add_argument("--features-dir", required=True)
    p.add_argument("--samples", required=True)
    p.add_argument("--annotations", default=None, help="results/annotations.json (annotations-index)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--png-per-fold", type=int, required=True, help="config evaluate.png_per_fold: heatmap PNGs "
                   "per run (the rest: GeoJSON only)")
    p.add_argument("--title", default=None, help="title of the training curves (default: last two out-dir parts)")
    p.add_argument("--froc", default="{}", help="JSON of config evaluate.froc (lesion FROC settings)")

    p = add("probe", cmd_probe, "linear probe of one encoder's tile features against tumour annotations")
    p.add_argument("--encoder", required=True)
    p.add_argument("--features-dir", required=True, help='feature folder; "{fold}" is filled in per fold')
    p.add_argument("--folds", required=True)
    p.add_argument("--samples", required=True)
    p.add_argument("--classes", required=True, help="JSON list of class names; the first is negative")
    p.add_argument("--annotations", default=None, help="results/annotations.json (annotations-index)")
    p.add_argument("--bootstrap", type=int, required=True, help="config evaluate.bootstrap")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="results/probe/{encoder}.csv")
    p = add("probe-table", cmd_probe_table, "one probe table from the per-encoder probe rows")
    p.add_argument("--rows", nargs="+", required=True)
    p.add_argument("--out", required=True)

    p = add("hnm-mine", cmd_hnm_mine, "hard-negative mining, one round of one fold: DSMIL + MIRank, tile scores, gate")
    p.add_argument("--features-dir", required=True, help="the round-(t-1) encoder's features of the fold")
    p.add_argument("--folds", required=True)
    p.add_argument("--samples", required=True)
    p.add_argument("--classes", required=True, help="JSON list of class names; the first is negative")
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--params", required=True, help="JSON of one config `hnm` entry")
    p.add_argument("--previous", default="", help="round t-1 dir (gate.json, pseudo_labels.npz); none for round 1")
    add_run_args(p)
    p.add_argument("--out-dir", required=True, help="results/hnm/{run}/fold{k}/round{t}")
    p = add("hnm-finetune", cmd_hnm_finetune, "hard-negative mining: fine-tune the encoder on one round's mined tiles")
    p.add_argument("--tiles-dir", required=True, help="results/tiles (the training slides' stores are used)")
    p.add_argument("--samples", required=True, help="sample sheet: the slides of results/tiles")
    p.add_argument("--pseudo-labels", required=True, help="results/hnm/{run}/fold{k}/round{t}/pseudo_labels.npz")
    p.add_argument("--params", required=True, help="JSON of one config `hnm` entry")
    p.add_argument("--base", required=True, help="JSON of the base encoder's entry (arch, depth, input_size)")
    p.add_argument("--init", default="", help="round t-1 weights; none: the base's seeded random init")
    add_run_args(p)
    p.add_argument("--out", required=True, help="results/encoders/{run}-r{t}/fold{k}/encoder.pt")
    p = add("hnm-mining", cmd_hnm_mining, "hard-negative mining evidence: mined negatives vs mimic annotations")
    p.add_argument("--rounds", nargs="+", required=True, help="round dirs results/hnm/{run}/fold{k}/round{t}")
    p.add_argument("--tiles-dir", required=True, help="results/tiles")
    p.add_argument("--samples", required=True, help="sample sheet: the slides of results/tiles")
    p.add_argument("--annotations", default=None, help="results/annotations.json: mimic and tumour outlines per slide")
    p.add_argument("--params", required=True, help="JSON of one config `hnm` entry")
    p.add_argument("--out", required=True, help="results/hnm/{run}/mining.csv")

    p = add("evaluate", cmd_evaluate, "benchmark tables, paired comparisons, claims and ROC plot from MIL predictions")
    p.add_argument("--predictions", nargs="+", required=True,
                   help="results/mil/{encoder}/{model}/fold{k}/seed{s}/predictions.csv (no seed{s}: seed 0)")
    p.add_argument("--classes", required=True, help="JSON list of class names")
    p.add_argument("--params", default="{}", help="JSON of config `evaluate` (baselines, compare, claim_margin)")
    p.add_argument("--encoders", default="[]", help="JSON of config `encoders` (order and claim metadata)")
    p.add_argument("--models", default="{}", help="JSON of config `mil.models` (run parameters the claims read)")
    p.add_argument("--pretrain", default="{}", help="JSON of config `pretrain` (pretrained encoders' metadata)")
    p.add_argument("--bootstrap", type=int, required=True, help="config evaluate.bootstrap (95%% CI resamples)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--out", required=True, help="benchmark.csv: one row per (encoder, model)")
    p.add_argument("--runs-out", default=None, help="per-run rows (default: <out stem>_runs.csv beside --out)")
    p.add_argument("--plot", required=True, help="ROC plot (PNG)")
    p.add_argument("--comparisons", default=None, help="comparisons.csv to write (paired AUC differences)")
    p.add_argument("--claims", default=None, help="claims.csv to write (the seed papers' claims)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from slidemil.slides.failures import SlideFailure
    from slidemil.cohorts.sheet import SampleSheetError
    from slidemil.slides.errors import SlideError

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except SlideFailure:  # its one-line ERROR is logged already
        return 1
    except (SlideError, SampleSheetError, FileNotFoundError) as e:
        print(f"slidemil {args.cmd}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
