"""Pretraining throughput: the full pipeline (Zarr read, JPEG decode, augment, model step) vs the model alone.

    .venv/bin/python benchmarks/pretrain.py                 # CPU demo shape: ResNet18 depth 3, 64 px
    .venv/bin/python benchmarks/pretrain.py --device cuda --depth 4 --tile 224 --size 224 --batch 256 --workers 8

Makes (under --cache) a synthetic cohort of JPEG tile stores with neighbour graphs, then, in one
process and one run: (a) `slidemil.ssl.pretrain`'s step on pairs from `PairDataset` through a DataLoader
(spatial pairs, H&E batch augmentations on the device), (b) the same optimiser step on random
tensors already on the device (the model-only ceiling). Prints images/s of both and their ratio;
last line: one JSON object. Images = 2 per pair (both views).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from slidemil.device import resolve_device  # noqa: E402
from slidemil.slides.graph import save_graph  # noqa: E402
from slidemil.ssl.pretrain import (PretrainParams, build_model, build_objective_and_sampler,  # noqa: E402
                                   make_optimizer, pair_views)
from slidemil.ssl.augment import AugmentParams, BatchAugment  # noqa: E402
from slidemil.ssl.data import PairDataset, SlideSource  # noqa: E402
from slidemil.slides.store import atomic_dir, create_tile_arrays, write_index_arrays  # noqa: E402


def synthetic_store(path: Path, n: int, tile: int, seed: int) -> None:
    """n tiles of smooth H&E-like colour noise on a square-ish grid (JPEG per tile, as the tile stage writes)."""
    if path.exists():
        return
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    grid = np.array([(i % side, i // side) for i in range(n)])
    base = rng.normal(0, 1, (n, tile // 8, tile // 8, 3))
    imgs = torch.nn.functional.interpolate(torch.tensor(base).permute(0, 3, 1, 2), size=(tile, tile), mode="bilinear")
    imgs = imgs.permute(0, 2, 3, 1).numpy()
    colour = np.array([200, 140, 190])  # pinkish purple
    tiles = np.clip(colour + 30 * imgs + rng.normal(0, 8, imgs.shape), 0, 255).astype(np.uint8)
    with atomic_dir(path) as tmp:
        import zarr

        g = zarr.open_group(tmp, mode="w", zarr_format=3)
        create_tile_arrays(g, n, tile)[:] = tiles
        write_index_arrays(g, grid * tile, grid)
        g.attrs.update({"slide_id": path.stem, "status": "ok"})
    save_graph(path.with_suffix(".npz"), grid, 1)


def cohort(cache: Path, slides: int, tiles: int, tile: int) -> list[SlideSource]:
    out = []
    for s in range(slides):
        p = cache / f"t{tile}_n{tiles}" / f"s{s}.zarr"
        p.parent.mkdir(parents=True, exist_ok=True)
        synthetic_store(p, tiles, tile, s)
        out.append(SlideSource(f"s{s}", str(p), str(p.with_suffix(".npz")), s % 2))
    return out


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--objective", default="simclr")
    ap.add_argument("--sampler", default="spatial")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--tile", type=int, default=64, help="stored tile size, px")
    ap.add_argument("--size", type=int, default=64, help="network input size, px")
    ap.add_argument("--batch", type=int, default=64, help="pairs per step")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per mode (after 2 warm-up steps)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--tiles", type=int, default=512, help="tiles per synthetic slide")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "slidemil-bench" / "pretrain"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    params = PretrainParams(objective=a.objective, sampler=a.sampler, backbone=a.backbone, depth=a.depth,
                            input_size=a.size, batch_size=a.batch, workers=a.workers, precision=a.precision,
                            tiles_per_epoch=a.batch * (a.steps + 2))
    sources = cohort(Path(a.cache), a.slides, a.tiles, a.tile)
    model, _ = build_model(params, 0)
    model = model.to(dev).to(memory_format=torch.channels_last).train()
    objective, sampler = build_objective_and_sampler(params)
    opt = make_optimizer(params, model)
    aug = BatchAugment(AugmentParams(), a.size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    g = torch.Generator().manual_seed(0)

    def step(x1: torch.Tensor, x2: torch.Tensor, labels: torch.Tensor) -> None:
        z1, z2, t1, t2 = pair_views(model, None, x1, x2, objective, dev, a.precision)
        loss = objective(z1, z2, labels=labels, t1=t1, t2=t2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # (a) full pipeline
    ds = PairDataset(sources, sampler, a.batch, params.tiles_per_epoch, 0)
    ds.set_epoch(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch, drop_last=True, num_workers=a.workers,
                                         pin_memory=dev.type == "cuda", prefetch_factor=4 if a.workers else None)
    it = iter(loader)
    for _ in range(2):
        x, y, lab, _ = next(it)
        step(aug(x.to(dev), g), aug(y.to(dev), g), lab.to(dev))
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        x, y, lab, _ = next(it)
        step(aug(x.to(dev, non_blocking=True), g), aug(y.to(dev, non_blocking=True), g), lab.to(dev))
    sync(dev)
    full = 2 * a.batch * a.steps / (time.perf_counter() - t0)

    # (b) model alone on tensors already on the device
    x1 = torch.randn(a.batch, 3, a.size, a.size, device=dev).contiguous(memory_format=torch.channels_last)
    x2 = torch.randn_like(x1)
    lab = torch.randint(0, 2, (a.batch,), device=dev)
    for _ in range(2):
        step(x1, x2, lab)
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step(x1, x2, lab)
    sync(dev)
    model_only = 2 * a.batch * a.steps / (time.perf_counter() - t0)

    # (c) data + augmentation alone (what the model step has to hide)
    ds.set_epoch(1)
    it = iter(torch.utils.data.DataLoader(ds, batch_size=a.batch, drop_last=True, num_workers=a.workers,
                                          prefetch_factor=4 if a.workers else None))
    sync(dev)
    t0 = time.perf_counter()
    n = 0
    for x, y, _, _ in it:
        aug(x.to(dev), g), aug(y.to(dev), g)
        n += 2 * len(x)
    sync(dev)
    data_only = n / (time.perf_counter() - t0)
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu x{a.threads} threads"
    print(f"pretrain {a.objective}/{a.sampler} {a.backbone} depth {a.depth}, {a.tile} px tiles -> {a.size} px, "
          f"batch {a.batch} pairs, {a.workers} workers, {dev_name}")
    print(f"  full pipeline  {full:8.1f} images/s")
    print(f"  model only     {model_only:8.1f} images/s")
    print(f"  data+augment   {data_only:8.1f} images/s")
    print(f"  full / model   {full / model_only:8.2f}")
    print(json.dumps({"benchmark": "pretrain", "device": dev_name, "objective": a.objective, "sampler": a.sampler,
                      "backbone": a.backbone, "depth": a.depth, "tile": a.tile, "size": a.size, "batch": a.batch,
                      "workers": a.workers, "precision": a.precision if dev.type == "cuda" else "fp32",
                      "full_images_per_s": round(full, 1), "model_images_per_s": round(model_only, 1),
                      "data_augment_images_per_s": round(data_only, 1), "ratio": round(full / model_only, 3)}))


if __name__ == "__main__":
    main()
