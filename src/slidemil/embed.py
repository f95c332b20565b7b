"""Frozen encoders (a registry, timm-style) and per-slide embedding of tile stores."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from slidemil.store import open_tiles, write_features

log = logging.getLogger(__name__)

ENCODERS: dict[str, Callable[..., nn.Module]] = {}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def register_encoder(name: str):
    def deco(fn: Callable[..., nn.Module]):
        ENCODERS[name] = fn
        return fn

    return deco


def _torchvision_resnet(arch: str, depth: int) -> nn.Module:
    """ResNet up to `depth` residual stages (1-4) + global average pooling: [B,3,H,W] -> [B,D]."""
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None)
    stages = [net.layer1, net.layer2, net.layer3, net.layer4][:depth]
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, *stages,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


@register_encoder("resnet18")
def resnet18(depth: int = 4) -> nn.Module:
    return _torchvision_resnet("resnet18", depth)


@register_encoder("resnet50")
def resnet50(depth: int = 4) -> nn.Module:
    return _torchvision_resnet("resnet50", depth)


@dataclass(frozen=True)
class EncoderSpec:
    """One entry of config `encoders`: which network, its weights, and its input size."""

    name: str
    arch: str = "resnet18"
    weights: str | None = None  # local state-dict file; None = random init (seeded)
    input_size: int = 64  # tiles are resized to this before the network
    depth: int = 4  # residual stages kept (fewer = cheaper, for the CPU demo)
    batch_size: int = 128
    extra: dict = field(default_factory=dict)


def _load_weights(net: nn.Module, path: str, name: str) -> None:
    """Load a torchvision-style state dict (full-model keys like 'layer1.0.conv1.weight')."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"encoder {name}: weights file {p} not found; compute nodes are offline, "
                                "so download the checkpoint beforehand and set its path in config `encoders`")
    state = torch.load(p, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    # map torchvision names onto our Sequential: conv1->0, bn1->1, layerK->(3+K)
    remap = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    mapped = {}
    for k, v in state.items():
        head, _, rest = k.partition(".")
        if head in remap:
            mapped[f"{remap[head]}.{rest}"] = v
    missing, _ = net.load_state_dict(mapped, strict=False)
    if missing:
        raise ValueError(f"encoder {name}: {p} lacks {len(missing)} weights (e.g. {missing[0]}); "
                         "is it a torchvision ResNet state dict of the configured arch?")


def build_encoder(spec: EncoderSpec, seed: int) -> nn.Module:
    """The frozen encoder in eval mode; random init is seeded so every slide job gets the same net."""
    if spec.arch not in ENCODERS:
        raise KeyError(f"unknown encoder arch {spec.arch!r}; choose one of {sorted(ENCODERS)}")
    torch.manual_seed(seed)
    net = ENCODERS[spec.arch](depth=spec.depth)
    if spec.weights:
        _load_weights(net, spec.weights, spec.name)
    net.eval().requires_grad_(False)
    return net


def preprocess(tiles: np.ndarray, input_size: int) -> torch.Tensor:
    """uint8 [B,T,T,3] -> normalised float [B,3,S,S] (channels_last)."""
    x = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != input_size:
        x = nn.functional.interpolate(x, size=(input_size, input_size), mode="bilinear",
                                      antialias=True, align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def pick_device(requested: str = "auto") -> torch.device:
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        log.warning("CUDA requested but not available; running on CPU")
    return torch.device("cpu")


@torch.inference_mode()
def embed_slide(tiles_path: str | Path, out: str | Path, spec: EncoderSpec, seed: int,
                device: str = "auto", progress: bool = True) -> int:
    """Embed every tile of a store and write features/{encoder}/{slide}.zarr. Returns N."""
    from tqdm import tqdm

    dev = pick_device(device)
    g = open_tiles(tiles_path)
    tiles, n = g["tiles"], g["tiles"].shape[0]
    net = build_encoder(spec, seed).to(dev).to(memory_format=torch.channels_last)
    with torch.device("cpu"):
        dim = net(preprocess(np.zeros((1, tiles.shape[1], tiles.shape[2], 3), np.uint8), spec.input_size).to(dev)).shape[1]
    feats = np.zeros((n, dim), np.float32)
    bar = tqdm(total=n, desc=f"embed {Path(tiles_path).stem}", unit="tile", disable=not progress, mininterval=2)
    for a in range(0, n, spec.batch_size):
        batch = tiles[a : a + spec.batch_size]
        feats[a : a + len(batch)] = net(preprocess(batch, spec.input_size).to(dev)).float().cpu().numpy()
        bar.update(len(batch))
    bar.close()
    attrs = {"encoder": spec.name, "arch": spec.arch, "weights": spec.weights, "input_size": spec.input_size,
             "depth": spec.depth, "seed": seed, "tiles_store": str(tiles_path),
             "slide_id": g.attrs.get("slide_id"), "status": g.attrs.get("status", "ok" if n else "empty"),
             "reason": g.attrs.get("reason", "")}
    if n == 0:  # a failed or tissue-free slide: an empty feature store that MIL skips, never a crash
        log.warning("%s: no tiles (tile store %s%s): writing an empty feature store", attrs["slide_id"],
                    attrs["status"], f": {attrs['reason']}" if attrs["reason"] else "")
    write_features(out, feats, g["coords"][:], g["grid"][:], attrs)
    log.info("%s: %d tiles embedded to %d-d with %s on %s", attrs["slide_id"], n, dim, spec.name, dev)
    return n
