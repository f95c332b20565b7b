"""Reading encoder weights from the formats people have, with errors that name the missing keys.

Accepted: a torch file (state dict, or a dict holding one under state_dict / model / net /
teacher / encoder), a .safetensors file, our own pretraining output (`encoder.pt`, format
"slidemil-encoder"), torchvision and timm checkpoints (heads like fc.* / head.* are ignored),
DataParallel / Lightning prefixes (module., model., backbone., encoder.), and Hugging Face
Dinov2Model files (Phikon-v2), converted to timm names.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model", "net", "teacher", "encoder", "backbone", "model_state_dict")
STRIP_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.", "student.", "teacher.")
HEAD_PREFIXES = ("fc.", "head.", "heads.", "classifier.", "head_drop.", "projector.", "projection.", "predictor.")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the configured network."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped from the usual container dicts."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file {p} not found; compute nodes are offline, so download the "
                                "checkpoint beforehand and set its path in config `encoders`")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - safetensors ships with timm
            raise CheckpointError(f"{p} is a safetensors file but the safetensors package is missing") from e
        return load_file(str(p), device="cpu")
    obj = torch.load(p, map_location="cpu", weights_only=True)
    for _ in range(3):  # nested containers, e.g. {"state_dict": {"model": ...}}
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p} holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def hf_dinov2_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face Dinov2Model keys (embeddings.*, encoder.layer.N.*, layernorm.*) -> timm ViT keys."""
    out: dict[str, torch.Tensor] = {}
    ren = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
           "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
           "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
           "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")})
    for k, v in state.items():
        if k in ren:
            out[ren[k]] = v
    for i in layers:
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for a, b in (("norm1", "norm1"), ("norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"),
                     ("attention.output.dense", "attn.proj")):
            for t in ("weight", "bias"):
                if f"{src}{a}.{t}" in state:
                    out[f"{dst}{b}.{t}"] = state[f"{src}{a}.{t}"]
        for t in ("weight", "bias"):
            qkv = [state.get(f"{src}attention.attention.{n}.{t}") for n in ("query", "key", "value")]
            if all(x is not None for x in qkv):
                out[f"{dst}attn.qkv.{t}"] = torch.cat(qkv, dim=0)
        for n, m in (("layer_scale1.lambda1", "ls1.gamma"), ("layer_scale2.lambda1", "ls2.gamma")):
            if f"{src}{n}" in state:
                out[f"{dst}{m}"] = state[f"{src}{n}"]
    return out


def _candidates(state: dict[str, torch.Tensor], net_prefix: str) -> list[dict[str, torch.Tensor]]:
    """Key renamings worth trying: as is, prefixes stripped, HF Dinov2 converted, net prefix added."""
    cands = [state]
    cur = state
    for _ in range(3):
        for pre in STRIP_PREFIXES:
            if cur and all(k.startswith(pre) for k in cur):
                cur = {k[len(pre):]: v for k, v in cur.items()}
                cands.append(cur)
                break
        else:
            break
    for pre in STRIP_PREFIXES:  # partial prefixes (e.g. only the backbone's keys carry one)
        sub = {k[len(pre):]: v for k, v in state.items() if k.startswith(pre)}
        if sub:
            cands.append(sub)
    if any(k.startswith("embeddings.patch_embeddings") for c in cands for k in c):
        cands += [hf_dinov2_to_timm(c) for c in list(cands)]
    if net_prefix:
        cands += [{net_prefix + k: v for k, v in c.items()} for c in list(cands)]
    return cands


def load_checkpoint(net: nn.Module, path: str | Path, name: str = "encoder") -> list[str]:
    """Load `path` into `net` in place; returns the checkpoint keys left unused (heads etc.).

    Raises CheckpointError naming the missing keys (and the shapes that differ) when no
    renaming of the file's keys covers every parameter and buffer of `net`.
    """
    state = read_state_dict(path)
    want = net.state_dict()
    best, best_hits = None, -1
    for cand in _candidates(state, getattr(net, "checkpoint_prefix", "")):
        hits = sum(1 for k in want if k in cand)
        if hits > best_hits:
            best, best_hits = cand, hits
    assert best is not None
    missing = [k for k in want if k not in best and not k.endswith("num_batches_tracked")]
    shape_bad = [f"{k} {tuple(best[k].shape)} != {tuple(want[k].shape)}" for k in want
                 if k in best and best[k].shape != want[k].shape]
    if missing or shape_bad:
        example = ", ".join(list(state)[:3])
        msg = f"encoder {name}: {path} does not fit the network"
        if missing:
            msg += f"; missing {len(missing)} of {len(want)} keys: {', '.join(missing[:8])}" + (
                " ..." if len(missing) > 8 else "")
        if shape_bad:
            msg += f"; shapes differ: {', '.join(shape_bad[:4])}"
        msg += f" (file keys look like: {example}). Is it a checkpoint of the configured arch?"
        raise CheckpointError(msg)
    net.load_state_dict({k: best[k] for k in want if k in best}, strict=False)
    unused = [k for k in best if k not in want]
    ignorable = [k for k in unused if k.startswith(HEAD_PREFIXES)]
    if len(unused) > len(ignorable):
        log.info("encoder %s: %d keys of %s unused (e.g. %s)", name, len(unused), path, unused[:3])
    return unused
