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


def _fields(cls, params: dict) -> dict:
    """Keep the keys a params dataclass knows (config blocks may carry keys for other stages)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in params.items() if k in names}


def cmd_demo_slide(a: argparse.Namespace) -> None:
    from slidemil.demo import DemoSlideSpec, make_demo_slide

    p = _json(a.params)
    spec = DemoSlideSpec(**{k: p[k] for k in ("width", "height", "mpp") if k in p})
    make_demo_slide(a.slide_id, a.positive, a.seed, Path(a.out), Path(a.annotation), spec)


def cmd_mask(a: argparse.Namespace) -> None:
    from slidemil.tissue import TissueParams, mask_slide

    p = _json(a.params)
    meta = mask_slide(a.slide, a.out, a.qc, TissueParams(**_fields(TissueParams, p)),
                      mask_mpp=p.get("mask_mpp", 8.0), mpp_override=a.mpp)
    logging.info("%s: tissue %.1f%% of the slide, %.2f mm2", a.slide_id, 100 * meta["tissue_fraction"],
                 meta["tissue_area_mm2"])


def cmd_tile(a: argparse.Namespace) -> None:
    import numpy as np
    from PIL import Image

    from slidemil.tiling import TileParams, load_mask, tile_boxes_in_mask, tile_slide
    from slidemil.tissue import overlay

    params = TileParams(**_fields(TileParams, _json(a.params)))
    attrs = tile_slide(a.slide, a.mask, a.out, params, a.slide_id, a.mpp)
    # QC: thumbnail-sized mask overlay with the kept tiles outlined
    import zarr

    mask, meta = load_mask(a.mask)
    coords = zarr.open_group(a.out, mode="r")["coords"][:]
    qc_rgb = np.asarray(Image.open(a.mask_qc).convert("RGB"))
    boxes = tile_boxes_in_mask(coords, attrs["tile_size_level0"], meta["downsample"])
    Path(a.qc).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(qc_rgb, np.zeros_like(mask), boxes)).save(a.qc)


def cmd_graph(a: argparse.Namespace) -> None:
    import zarr

    from slidemil.graph import save_graph

    grid = zarr.open_group(a.tiles, mode="r")["grid"][:]
    n_edges = save_graph(a.out, grid, a.radius)
    logging.info("%s: %d tiles, %d directed edges at radius %d", a.tiles, len(grid), n_edges, a.radius)


def cmd_embed(a: argparse.Namespace) -> None:
    from slidemil.embed import EncoderSpec, embed_slide

    import torch

    torch.set_num_threads(a.threads)  # as many as the rule was given: same numbers locally and on SLURM
    spec = EncoderSpec(**_fields(EncoderSpec, _json(a.encoder)))
    embed_slide(a.tiles, a.out, spec, a.seed, device=a.device)


def cmd_qc(a: argparse.Namespace) -> None:
    from slidemil.qc import cohort_table

    table = cohort_table(a.tiles, a.masks)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(a.out, sep="\t", index=False)
    flagged = table[table["flags"] != ""]
    for _, r in flagged.iterrows():
        logging.warning("%s: %s", r["slide_id"], r["flags"])
    logging.info("%d slides, %d tiles, %d flagged", len(table), table["n_tiles"].sum(), len(flagged))


def cmd_folds(a: argparse.Namespace) -> None:
    from slidemil.folds import fold_table
    from slidemil.samples import SampleSheetError, read_sheet

    p = _json(a.params)
    samples = read_sheet(a.samples)
    if p.get("use_official_split"):
        if "split" not in samples.columns or samples["split"].isna().any():
            raise SampleSheetError(f"{a.samples}: evaluate.use_official_split is true but the `split` "
                                   "column is missing or has blanks; fill it (train/val/test) or set it false")
    else:
        samples = samples.drop(columns=["split"], errors="ignore")
    table = fold_table(samples, p.get("n_folds", 5), a.seed, p.get("val_fraction", 0.2))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(a.out, index=False)
    logging.info("%s", table.groupby(["fold", "role"]).size().unstack(fill_value=0).to_string())


def cmd_mil(a: argparse.Namespace) -> None:
    from slidemil.mil.train import run_fold

    p = _json(a.params)
    device = p.pop("device", "auto")
    p.pop("models", None)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    run_fold(a.features_dir, a.folds, a.samples, a.fold, a.model, p, a.out_dir, a.seed,
             json.loads(a.classes), device=device, threads=a.threads)


def cmd_evaluate(a: argparse.Namespace) -> None:
    from slidemil.evaluate import write_benchmark

    runs = []
    for pred in a.predictions:  # results/mil/{encoder}/{model}/fold{k}/predictions.csv
        parts = Path(pred).parts
        runs.append({"encoder": parts[-4], "model": parts[-3], "fold": int(parts[-2].removeprefix("fold")),
                     "predictions_csv": pred})
    write_benchmark(runs, json.loads(a.classes), a.out, a.plot, n_boot=a.bootstrap, seed=a.seed)


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
        if name == "tile":
            p.add_argument("--mask", required=True)
            p.add_argument("--mask-qc", required=True, help="the mask stage's QC PNG (background picture)")

    p = add("graph", cmd_graph, "neighbour graph of one tile store")
    p.add_argument("--tiles", required=True)
    p.add_argument("--radius", type=int, default=1)
    p.add_argument("--out", required=True)

    p = add("embed", cmd_embed, "embed one tile store with a frozen encoder")
    p.add_argument("--tiles", required=True)
    p.add_argument("--encoder", required=True, help="JSON of one config `encoders` entry")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    p = add("qc", cmd_qc, "cohort QC table from tile stores and mask sidecars")
    p.add_argument("--tiles", nargs="+", required=True)
    p.add_argument("--masks", nargs="+", required=True)
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
    p.add_argument("--params", default="{}", help="JSON of config `mil`")
    p.add_argument("--classes", required=True, help="JSON list of class names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", required=True)

    p = add("evaluate", cmd_evaluate, "benchmark table and ROC plot from MIL predictions")
    p.add_argument("--predictions", nargs="+", required=True)
    p.add_argument("--classes", required=True, help="JSON list of class names")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--plot", required=True)
    return ap


def main(argv: list[str] | None = None) -> int:
    from slidemil.samples import SampleSheetError
    from slidemil.slide import SlideError

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (SlideError, SampleSheetError, FileNotFoundError) as e:
        print(f"slidemil {args.cmd}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
