"""What one hard-negative-mining round costs, per slide, against pretraining the base encoder.

    .venv/bin/python benchmarks/hnm_round.py                     # CPU, the demo's shapes and config
    .venv/bin/python benchmarks/hnm_round.py --device cuda --threads 8

Makes (under --cache) a synthetic fold shaped like the demo's: --slides tile stores of --tiles
64 px JPEG tiles (the demo averages 163 tissue tiles a slide) with feature stores of the base's
width, then times in one process, with config/config.yaml's `pretrain.simclr-spatial` and
`hnm.simclr-hnm` entries: (baseline) pretraining the base on those slides; (1) `mine_round`
(DSMIL + MIRank, scores, gate); (2) `finetune_round` (the SupCon steps on the mined tiles);
(3) re-embedding every slide with the round's encoder. Fine-tuning costs a fixed number of
images per round (epochs x 2 x tiles_per_epoch tiles, two views each) whatever the cohort;
mining and embedding grow with the slides. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pretrain import synthetic_store  # noqa: E402

from slidemil.encoders.embed import embed_slide  # noqa: E402
from slidemil.encoders import EncoderSpec  # noqa: E402
from slidemil.config import HNMParams  # noqa: E402
from slidemil.hnm.finetune import finetune_round  # noqa: E402
from slidemil.hnm.mine import mine_round  # noqa: E402
from slidemil.ssl.pretrain import PretrainParams, pretrain  # noqa: E402
from slidemil.ssl.data import SlideSource  # noqa: E402
from slidemil.slides.store import write_features  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--slides", type=int, default=24)
    ap.add_argument("--tiles", type=int, default=163)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "slidemil-bench"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    base = PretrainParams.from_dict({**cfg["pretrain"]["simclr-spatial"], "workers": 0})
    hnm = HNMParams.from_dict({k: v for k, v in cfg["hnm"]["simclr-hnm"].items() if k != "enabled"})

    work = Path(tempfile.mkdtemp(prefix="hnm-bench-"))
    cache = Path(a.cache) / f"t64_n{a.tiles}"
    cache.mkdir(parents=True, exist_ok=True)
    n_train, n_val = a.slides * 2 // 3, a.slides // 6
    roles = ["train"] * n_train + ["val"] * n_val + ["test"] * (a.slides - n_train - n_val)
    sources, rng = [], np.random.default_rng(0)
    for s in range(a.slides):
        p = cache / f"s{s}.zarr"
        synthetic_store(p, a.tiles, 64, s)
        sources.append(SlideSource(f"s{s}", str(p), str(p.with_suffix(".npz")), s % 2))
        feats = rng.normal(size=(a.tiles, 256))
        feats[: a.tiles // 10] += 1.5 * (s % 2)  # a tenth of a positive slide's tiles are witnesses
        grid = np.zeros((a.tiles, 2), int)
        write_features(work / "features" / f"s{s}.zarr", feats, grid, grid, {"slide_id": f"s{s}"})
    pd.DataFrame({"slide_id": [f"s{s}" for s in range(a.slides)], "fold": 0, "role": roles}).to_csv(
        work / "folds.csv", index=False)
    (work / "samples.tsv").write_text("slide_id\tpath\tlabel\tpatient_id\n" + "".join(
        f"s{s}\tx\t{'tumour' if s % 2 else 'normal'}\tP{s}\n" for s in range(a.slides)))
    train = [src for src, r in zip(sources, roles) if r == "train"]

    t0 = time.perf_counter()
    pretrain(train, base, work / "base" / "encoder.pt", seed=0, device=a.device)
    t_base = time.perf_counter() - t0
    t0 = time.perf_counter()
    mine_round(work / "features", work / "folds.csv", work / "samples.tsv", 0, hnm, ["normal", "tumour"],
               work / "round1", seed=0, round_=1, device=a.device)
    t_mine = time.perf_counter() - t0
    base_entry = {"arch": base.backbone, "depth": base.depth, "input_size": base.input_size}
    t0 = time.perf_counter()
    finetune_round([s.tiles for s in sources], work / "round1" / "pseudo_labels.npz", hnm, base_entry,
                   str(work / "base" / "encoder.pt"), work / "r1" / "encoder.pt", seed=0, device=a.device)
    t_finetune = time.perf_counter() - t0
    spec = EncoderSpec("r1", arch=base.backbone, depth=base.depth, input_size=base.input_size,
                       weights=str(work / "r1" / "encoder.pt"))
    t0 = time.perf_counter()
    for s in sources:
        embed_slide(s.tiles, work / "r1feat" / f"{s.slide_id}.zarr", spec, seed=0, device=a.device, progress=False)
    t_embed = time.perf_counter() - t0

    images = hnm.epochs * 2 * hnm.tiles_per_epoch * 2
    per_slide = (t_mine + t_finetune + t_embed) / a.slides
    print(f"base pretraining ({base.epochs} epochs x {base.tiles_per_epoch} pairs, {len(train)} slides): {t_base:.1f} s")
    print(f"round: mine {t_mine:.1f} s, fine-tune {t_finetune:.1f} s ({images} images, "
          f"{images / t_finetune:.0f}/s), re-embed {t_embed:.1f} s ({t_embed / a.slides:.2f} s/slide)")
    print(f"one round per slide of the fold: {per_slide:.2f} s; round / base pretraining: "
          f"{(t_mine + t_finetune + t_embed) / t_base:.2f}")
    print(json.dumps({"device": a.device, "threads": a.threads, "slides": a.slides, "tiles_per_slide": a.tiles,
                      "train_slides": len(train), "base_pretrain_s": round(t_base, 2), "mine_s": round(t_mine, 2),
                      "finetune_s": round(t_finetune, 2), "finetune_images": images,
                      "finetune_images_per_s": round(images / t_finetune, 1), "embed_s": round(t_embed, 2),
                      "embed_s_per_slide": round(t_embed / a.slides, 3), "round_s_per_slide": round(per_slide, 3),
                      "round_over_base_pretrain": round((t_mine + t_finetune + t_embed) / t_base, 3)}))


if __name__ == "__main__":
    main()
