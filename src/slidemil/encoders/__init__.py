"""Encoder registry (in the style of timm's `register_model` and TRIDENT's encoder factory).

Each entry builds the network (random weights; nothing is ever downloaded: compute nodes are
offline) and carries its own input size, normalisation and inference precision. Weights come
from a local file the user names (`load_checkpoint`: torchvision, timm, safetensors, HF-style
and our own pretraining output).

    entry = ENCODERS["uni2-h"]; net = entry.build(); load_checkpoint(net, "uni2h.bin", entry)
    net(x [B, 3, S, S] normalised with entry.mean/std) -> [B, entry.dim]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from slidemil.config import EncoderSpec

from slidemil.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class EncoderEntry:
    """A registered encoder: how to build it and how to feed it.

    builder(**overrides) -> nn.Module mapping float [B, 3, S, S] -> [B, D]. `dim`: D with the
    default architecture (None when it depends on an override, e.g. a ResNet's `depth`).
    `precision`: autocast dtype on CUDA (the CPU always runs fp32: bf16 is ~4x slower there).
    """

    name: str
    builder: Callable[..., nn.Module]
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    precision: str = "fp32"
    dim: int | None = None
    family: str = "timm"
    doc: str = ""

    def build(self, **overrides) -> nn.Module:
        return self.builder(**overrides)


ENCODERS: Registry[EncoderEntry] = Registry("encoder", origin=lambda entry: entry.builder)


def register_encoder(name: str, **meta) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a builder under `name` with its EncoderEntry metadata."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if meta.get("precision", "fp32") not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")
        ENCODERS.add(name, EncoderEntry(name=name, builder=fn, doc=(fn.__doc__ or "").strip(), **meta))
        return fn

    return deco


def get_entry(arch: str) -> EncoderEntry:
    if arch in ENCODERS:
        return ENCODERS[arch]
    if arch.startswith("timm:"):  # any timm architecture by name, ImageNet statistics, pooled output
        from slidemil.encoders.timm_models import timm_entry

        return timm_entry(arch[5:])
    raise KeyError(f"unknown encoder arch {arch!r}; choose one of {sorted(ENCODERS)} or 'timm:<model name>'")


# importing the modules registers their entries
from slidemil.encoders import pathology, timm_models, torchvision_models  # noqa: E402,F401
from slidemil.encoders.checkpoints import CheckpointError, load_checkpoint, read_state_dict  # noqa: E402

__all__ = ["ENCODERS", "EncoderEntry", "EncoderSpec", "CheckpointError", "get_entry", "load_checkpoint",
           "read_state_dict", "register_encoder", "IMAGENET_MEAN", "IMAGENET_STD"]


def build_encoder(spec: EncoderSpec, seed: int) -> nn.Module:
    """The frozen encoder of `spec` in eval mode, weights loaded; random init seeded so every job gets one net."""
    import torch

    entry = get_entry(spec.arch)
    torch.manual_seed(seed)
    net = entry.build(**spec.overrides())
    if spec.weights:
        load_checkpoint(net, spec.weights, spec.name)
    net.eval().requires_grad_(False)
    return net


def output_dim(net: nn.Module, input_size: int) -> int:
    """D of a [B, 3, S, S] -> [B, D] network, from one forward pass on the meta device when possible."""
    import torch

    with torch.no_grad():
        p = next(net.parameters(), None)
        dev = p.device if p is not None else torch.device("cpu")
        return int(net(torch.zeros(1, 3, input_size, input_size, device=dev)).shape[-1])


__all__ += ["build_encoder", "output_dim"]
