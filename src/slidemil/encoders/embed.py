"""Per-slide embedding of tile stores with a frozen encoder (registry: slidemil.encoders).

Tiles are read and JPEG-decoded by DataLoader workers (`EncoderSpec.workers`, prefetching two
batches each) while the model runs; resizing and normalisation happen on the model's device. On
CUDA: channels_last and autocast in the entry's precision (fp16/bf16); the CPU runs fp32.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slidemil.device import resolve_device
from slidemil.encoders import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, build_encoder, get_entry
from slidemil.slides.store import open_tiles, write_features

log = logging.getLogger(__name__)
AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def preprocess(tiles: np.ndarray | torch.Tensor, input_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [B,T,T,3] -> normalised float [B,3,S,S] (channels_last) on `device`."""
    x = torch.as_tensor(np.ascontiguousarray(tiles)) if isinstance(tiles, np.ndarray) else tiles
    x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != input_size:
        x = nn.functional.interpolate(x, size=(input_size, input_size), mode="bilinear", antialias=True,
                                      align_corners=False)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)


class TileBatches(torch.utils.data.Dataset):
    """Item k -> uint8 [b, T, T, 3], tiles k*batch_size .. of a store, decoded one JPEG at a time."""

    def __init__(self, tiles_path: str | Path, batch_size: int) -> None:
        from slidemil.slides.tile_reader import TileReader

        self.reader, self.batch_size = TileReader(tiles_path), batch_size
        self.n = len(self.reader)

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def __getitem__(self, k: int) -> torch.Tensor:
        idx = range(k * self.batch_size, min(self.n, (k + 1) * self.batch_size))
        return torch.from_numpy(np.stack([self.reader.read(i) for i in idx]))


def tile_loader(tiles_path: str | Path, batch_size: int, workers: int, pin: bool) -> torch.utils.data.DataLoader:
    ds = TileBatches(tiles_path, batch_size)
    return torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin,
                                       prefetch_factor=2 if workers else None, persistent_workers=False)


def autocast_for(device: torch.device, precision: str):
    """Autocast in the entry's precision on CUDA; a no-op context on the CPU (bf16 is ~4x slower there)."""
    if device.type == "cuda" and precision in AUTOCAST:
        return torch.autocast("cuda", dtype=AUTOCAST[precision])
    return torch.autocast("cpu", enabled=False)


@torch.inference_mode()
def embed_slide(tiles_path: str | Path, out: str | Path, spec: EncoderSpec, seed: int,
                device: str = "auto", progress: bool = True) -> int:
    """Embed every tile of a store and write features/{encoder}/{slide}.zarr. Returns N."""
    from tqdm import tqdm

    dev = resolve_device(device)
    entry = get_entry(spec.arch)
    size, precision = spec.input_size or entry.input_size, spec.precision or entry.precision  # None: the entry's
    g = open_tiles(tiles_path)
    n, tile = g["tiles"].shape[0], g["tiles"].shape[1]
    net = build_encoder(spec, seed)
    if hasattr(net, "fuse_batchnorm"):  # frozen: BatchNorm folded into the convolutions
        net.fuse_batchnorm()
    net = net.to(dev).to(memory_format=torch.channels_last)
    with autocast_for(dev, precision):
        dim = net(preprocess(np.full((1, tile, tile, 3), 255, np.uint8), size, entry.mean, entry.std, dev)).shape[1]
    feats = np.zeros((n, dim), np.float32)
    bar = tqdm(total=n, desc=f"embed {Path(tiles_path).stem}", unit="tile", disable=not progress, mininterval=2)
    a = 0
    if n:
        for batch in tile_loader(tiles_path, spec.batch_size, spec.workers, dev.type == "cuda"):
            with autocast_for(dev, precision):
                f = net(preprocess(batch, size, entry.mean, entry.std, dev))
            feats[a: a + len(batch)] = f.float().cpu().numpy()
            a += len(batch)
            bar.update(len(batch))
    bar.close()
    attrs = {"encoder": spec.name, "arch": spec.arch, "weights": spec.weights, "input_size": size,
             "depth": spec.depth, "precision": precision if dev.type == "cuda" else "fp32", "mean": list(entry.mean),
             "std": list(entry.std), "seed": seed, "tiles_store": str(tiles_path),
             "slide_id": g.attrs.get("slide_id"), "status": g.attrs.get("status", "ok" if n else "empty"),
             "reason": g.attrs.get("reason", "")}
    if n == 0:  # a failed or tissue-free slide: an empty feature store that MIL skips, never a crash
        log.warning("%s: no tiles (tile store %s%s): writing an empty feature store", attrs["slide_id"],
                    attrs["status"], f": {attrs['reason']}" if attrs["reason"] else "")
    write_features(out, feats, g["coords"][:], g["grid"][:], attrs)
    log.info("%s: %d tiles embedded to %d-d with %s on %s", attrs["slide_id"], n, dim, spec.name, dev)
    return n


def embed_slides(tiles: list[str], outs: list[str], spec: EncoderSpec, seed: int, device: str = "auto",
                 threads: int = 1) -> int:
    """The embed stage: each tile store into its feature store (a batch shares one process start-up).

    threads: torch's CPU threads, as many as the rule was given (the same numbers locally and on
    SLURM). Returns the number of tiles embedded.
    """
    if len(tiles) != len(outs):
        raise ValueError(f"embed: {len(tiles)} --tiles but {len(outs)} --out; give one output per tile store")
    torch.set_num_threads(threads)
    return sum(embed_slide(t, out, spec, seed, device=device) for t, out in zip(tiles, outs))
