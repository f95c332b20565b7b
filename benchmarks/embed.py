"""Embedding throughput: the full pipeline (Zarr read, JPEG decode in workers, preprocess, model) vs the model alone.

    .venv/bin/python benchmarks/embed.py                    # CPU demo shape: ResNet18 depth 3, 64 px
    .venv/bin/python benchmarks/embed.py --device cuda --arch resnet50 --depth 3 --tile 224 --size 224 --batch 512 --workers 8
    .venv/bin/python benchmarks/embed.py --device cuda --arch uni --tile 224 --workers 8

(a) `slidemil.encoders.embed.embed_slide` on a synthetic tile store (features written too), (b) the same
network on random tensors already on the device, same batch size and precision, in one run.
Prints tiles/s of both and their ratio; last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pretrain import synthetic_store  # noqa: E402

from slidemil.device import resolve_device  # noqa: E402
from slidemil.encoders.embed import autocast_for, embed_slide  # noqa: E402
from slidemil.encoders import EncoderSpec, build_encoder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--size", type=int, default=None, help="network input size (default: the entry's)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--tiles", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default=None)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "slidemil-bench" / "embed"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    depth = a.depth if a.depth is not None else (3 if a.arch.startswith("resnet") and a.tile <= 64 else None)
    size = a.size or (a.tile if a.arch.startswith("resnet") else None)
    spec = EncoderSpec("bench", arch=a.arch, depth=depth, input_size=size, batch_size=a.batch, workers=a.workers,
                       precision=a.precision)
    store = Path(a.cache) / f"t{a.tile}_n{a.tiles}.zarr"
    store.parent.mkdir(parents=True, exist_ok=True)
    synthetic_store(store, a.tiles, a.tile, 0)
    out = Path(a.cache) / "features.zarr"
    embed_slide(store, out, spec, 0, device=a.device, progress=False)  # warm-up (allocator, cudnn)
    t0 = time.perf_counter()
    embed_slide(store, out, spec, 0, device=a.device, progress=False)
    full = a.tiles / (time.perf_counter() - t0)

    net = build_encoder(spec, 0)
    if hasattr(net, "fuse_batchnorm"):  # the network embed_slide runs
        net.fuse_batchnorm()
    net = net.to(dev).to(memory_format=torch.channels_last)
    s = spec.resolved_input_size()
    x = torch.randn(a.batch, 3, s, s, device=dev).contiguous(memory_format=torch.channels_last)
    n_batches = max(1, a.tiles // a.batch)
    with torch.inference_mode(), autocast_for(dev, spec.resolved_precision()):
        net(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n_batches):
            net(x).float().cpu()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    model_only = n_batches * a.batch / (time.perf_counter() - t0)
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu x{a.threads} threads"
    print(f"embed {a.arch} depth {depth}, {a.tile} px tiles -> {s} px, batch {a.batch}, {a.workers} workers, {dev_name}")
    print(f"  full pipeline  {full:8.1f} tiles/s")
    print(f"  model only     {model_only:8.1f} tiles/s")
    print(f"  full / model   {full / model_only:8.2f}")
    print(json.dumps({"benchmark": "embed", "device": dev_name, "arch": a.arch, "depth": depth, "tile": a.tile,
                      "size": s, "batch": a.batch, "workers": a.workers,
                      "precision": spec.resolved_precision() if dev.type == "cuda" else "fp32",
                      "full_tiles_per_s": round(full, 1), "model_tiles_per_s": round(model_only, 1),
                      "ratio": round(full / model_only, 3)}))


if __name__ == "__main__":
    main()
