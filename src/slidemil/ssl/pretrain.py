"""Encoder pretraining: backbone + projection head + pair sampler + objective, seeded and resumable.

One framework for every objective in slidemil.ssl.losses: the two views of B pairs go through
the network in one forward pass (BatchNorm sees both, as in the authors' code), projections are
L2-normalised for contrastive objectives, BYOL/DINO keep an EMA teacher. A checkpoint is written
atomically after every epoch (`<out dir>/checkpoints/last.pt`); a restarted job (SLURM preemption)
resumes from it and ends with the same weights as an uninterrupted run: every epoch re-seeds
torch and the augmentation generator from (seed, epoch), and pairs are drawn per (seed, epoch, item).

Scopes: `all` trains once on every slide's tiles without labels (transductive, as DSMIL and
HNM-WSI do with SimCLR: test tiles are seen, never their labels); `fold{k}` trains on the training
slides of fold k only, the only scope allowed for objectives that use slide labels, so their
features are per fold too and each fold's MIL job reads the scope its encoder was trained on.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slidemil.config import PretrainParams
from slidemil.device import resolve_device
from slidemil.encoders import EncoderSpec, get_entry, load_checkpoint
from slidemil.files import atomic_path, write_text
from slidemil.ssl.augment import AugmentParams, BatchAugment
from slidemil.ssl.data import PairDataset, SlideSource
from slidemil.ssl.losses import OBJECTIVES, build_objective
from slidemil.ssl.losses.base import HeadSpec, Objective
from slidemil.ssl.samplers import PairSampler, build_sampler

log = logging.getLogger(__name__)
FORMAT = "slidemil-encoder"
AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def training_slides(folds_csv: str | Path, fold: int) -> list[str]:
    """Slide ids with role `train` in fold `fold` of results/folds.csv (slide_id, fold, role).

    Validation slides are left out too: their labels serve model selection only.
    """
    import pandas as pd

    t = pd.read_csv(folds_csv, dtype={"slide_id": str})
    if fold not in set(t["fold"]):
        raise ValueError(f"{folds_csv} has no fold {fold}")
    return sorted(t.loc[(t["fold"] == fold) & (t["role"] == "train"), "slide_id"].tolist())


def parse_scope(scope: str) -> int | None:
    """'all' -> None, 'fold3' -> 3."""
    if scope == "all":
        return None
    if scope.startswith("fold") and scope[4:].isdigit():
        return int(scope[4:])
    raise ValueError(f"scope must be 'all' or 'fold<k>', got {scope!r}")


def mlp(d_in: int, hidden: int, out: int, layers: int, bn: bool) -> nn.Sequential:
    """layers-1 x (Linear, [BatchNorm1d], ReLU) then Linear: [B, d_in] -> [B, out]."""
    mods: list[nn.Module] = []
    d = d_in
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden)] + ([nn.BatchNorm1d(hidden)] if bn else []) + [nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, out))
    return nn.Sequential(*mods)


class SSLNet(nn.Module):
    """backbone [B,3,S,S] -> [B,D] -> projector -> [B,P] (-> predictor for BYOL)."""

    def __init__(self, backbone: nn.Module, dim: int, head: HeadSpec) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = mlp(dim, head.hidden or dim, head.out, head.layers, head.bn)
        self.predictor = (mlp(head.out, head.predictor_hidden, head.out, 2, True)
                          if head.predictor_hidden else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.projector(self.backbone(x))
        return self.predictor(z) if self.predictor is not None else z  # in forward: DDP sees every parameter


def resolve_head(params: PretrainParams) -> HeadSpec:
    base = OBJECTIVES[params.objective].default_head
    return dataclasses.replace(base, **params.head)


def build_objective_and_sampler(params: PretrainParams) -> tuple[Objective, PairSampler]:
    """The entry's registered objective and pair sampler, built by signature: the objective gets its
    objective_args and, when it names `out_dim`, the projection head's width; the sampler the entry's
    fields it names (radius, p, ...)."""
    objective = build_objective(params.objective, offered={"out_dim": resolve_head(params).out},
                                **params.objective_args)
    fields = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    return objective, build_sampler(params.sampler, offered=fields)


def build_model(params: PretrainParams, seed: int) -> tuple[SSLNet, int]:
    """Seeded SSL network and its backbone width."""
    entry = get_entry(params.backbone)
    torch.manual_seed(seed)
    spec = EncoderSpec("pretrain", arch=params.backbone, depth=params.depth)
    backbone = entry.build(**spec.overrides())
    if params.weights:
        load_checkpoint(backbone, params.weights, f"pretrain init {params.backbone}")
    size = params.input_size or entry.input_size
    with torch.no_grad():
        was = backbone.training
        dim = int(backbone.eval()(torch.zeros(1, 3, size, size)).shape[-1])
        backbone.train(was)
    return SSLNet(backbone, dim, resolve_head(params)), dim


def lr_at(params: PretrainParams, step: int, steps_per_epoch: int) -> float:
    total = params.epochs * steps_per_epoch
    warm = params.warmup_epochs * steps_per_epoch
    if step < warm:
        return params.lr * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return params.lr * 0.5 * (1 + math.cos(math.pi * t))


def make_optimizer(params: PretrainParams, model: nn.Module) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    if params.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=params.lr, momentum=0.9, weight_decay=params.weight_decay)
    if params.optimizer == "adamw":
        return torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    raise ValueError(f"optimizer must be sgd or adamw, got {params.optimizer!r}")


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, m: float) -> None:
    """teacher <- m * teacher + (1 - m) * student, by name (the teacher has no BYOL predictor); buffers copied."""
    params = dict(student.named_parameters())
    for name, pt in teacher.named_parameters():
        pt.mul_(m).add_(params[name].detach(), alpha=1 - m)
    buffers = dict(student.named_buffers())
    for name, bt in teacher.named_buffers():
        bt.copy_(buffers[name])


def atomic_save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def world() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, (0, 1) when it is not initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(t: torch.Tensor | None) -> torch.Tensor | None:
    """Every rank's rows of t [b, ...], concatenated in rank order ([w*b, ...]); differentiable.

    Backward sums the gradients every rank's (identical) loss sends to this rank's rows, so with
    DDP's gradient averaging the update equals one process's on the whole batch.
    """
    _, w = world()
    if t is None or w == 1:
        return t
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private API; same arithmetic
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(t.contiguous()), dim=0)


def pair_views(model: nn.Module, teacher: nn.Module | None, x1: torch.Tensor, x2: torch.Tensor, objective,
               device: torch.device, precision: str):
    """One forward pass over cat([x1, x2]) -> (z1, z2, t1, t2) float32, normalised when asked.

    Under torch.distributed each is gathered from every rank (rank order), so contrastive
    negatives come from the whole global batch.
    """
    b = x1.shape[0]
    ctx = (torch.autocast("cuda", dtype=AUTOCAST[precision]) if device.type == "cuda" and precision in AUTOCAST
           else torch.autocast("cpu", enabled=False))
    with ctx:
        z = model(torch.cat([x1, x2]))
        t = None
        if teacher is not None:
            with torch.no_grad():
                t = teacher(torch.cat([x1, x2])).float()
    z = z.float()
    if objective.normalize:
        z = F.normalize(z, dim=1)
    t1, t2 = (t[:b], t[b:]) if t is not None else (None, None)
    return gather_rows(z[:b]), gather_rows(z[b:]), gather_rows(t1), gather_rows(t2)


def pretrain(sources: list[SlideSource], params: PretrainParams, out: str | Path, seed: int,
             device: str = "auto", on_epoch_end: Callable[[int], None] | None = None,
             progress: bool = False, dataset: PairDataset | None = None) -> dict:
    """Train and write `out` (encoder.pt: backbone weights + how to feed them); returns its metadata.

    sources: the slides of this scope (with labels when the objective uses them). Resumes from
    `<out dir>/checkpoints/last.pt` when it was written with the same params, seed and slides.
    dataset: pairs chosen by the caller instead of the sampler's (hard-negative mining's mined
    tiles, slidemil.hnm.finetune); its `digest()` joins the resume key.
    """
    out = Path(out)
    dev = resolve_device(device)
    rank, w = world()
    if w > 1 and dev.type == "cuda":  # torchrun: one process per GPU
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(dev)
    if params.batch_size % w:
        raise ValueError(f"batch_size {params.batch_size} is not divisible by the {w} processes")
    objective, sampler = build_objective_and_sampler(params)
    objective.to(dev)
    if objective.uses_labels and any(s.label is None or s.label < 0 for s in sources):
        raise ValueError(f"objective {params.objective} needs a label for every slide")
    entry = get_entry(params.backbone)
    size = params.input_size or entry.input_size
    balance = params.balance_labels if params.balance_labels is not None else objective.uses_labels
    ds = dataset if dataset is not None else PairDataset(sources, sampler, params.batch_size, params.tiles_per_epoch,
                                                         seed, balance_labels=balance)
    model, dim = build_model(params, seed)
    if w > 1 and dev.type == "cuda":  # BatchNorm statistics over the global batch (gloo/CPU: per rank)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(dev).to(memory_format=torch.channels_last)
    teacher = copy.deepcopy(model).requires_grad_(False) if objective.teacher else None
    if teacher is not None:
        teacher.predictor = None
    net = model
    if w > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = make_optimizer(params, model)
    aug = BatchAugment(AugmentParams.from_dict(params.augment), size, entry.mean, entry.std)
    slides = [s.slide_id for s in sources]
    key = {"digest": params.digest(), "seed": seed, "slides": hashlib.sha256("\n".join(slides).encode()).hexdigest()}
    if dataset is not None:
        key["data"] = dataset.digest()
    ckpt_path = out.parent / "checkpoints" / "last.pt"
    start, history = 0, []
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=dev, weights_only=False)
        if ck.get("key") == key:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            objective.load_state_dict(ck["objective"])
            if teacher is not None:
                teacher.load_state_dict(ck["teacher"])
            start, history = ck["epoch"] + 1, ck["history"]
            log.info("resuming %s from epoch %d (%s)", out, start, ckpt_path)
        else:
            log.warning("%s was written with other params, seed or slides: starting afresh", ckpt_path)
    ds.set_epoch(0)
    steps_per_epoch = len(ds) // params.batch_size
    local_b = params.batch_size // w  # rank r reads rows [r*local_b, (r+1)*local_b) of every global batch
    for epoch in range(start, params.epochs):
        torch.manual_seed(seed * 100003 + epoch)
        g = torch.Generator().manual_seed(seed * 100003 + epoch + 7919 * rank)
        ds.set_epoch(epoch)
        mine = [k * params.batch_size + rank * local_b + j for k in range(steps_per_epoch) for j in range(local_b)]
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, mine), batch_size=local_b, shuffle=False,
                                             drop_last=True, num_workers=params.workers,
                                             pin_memory=dev.type == "cuda",
                                             prefetch_factor=4 if params.workers else None)
        model.train()
        t0, losses, n_spatial, n_pairs = time.time(), [], 0, 0
        for step, (a, b, labels, spatial) in enumerate(loader):
            it = epoch * steps_per_epoch + step
            for group in opt.param_groups:
                group["lr"] = lr_at(params, it, steps_per_epoch)
            x1 = aug(a.to(dev, non_blocking=True), g)
            x2 = aug(b.to(dev, non_blocking=True), g)
            z1, z2, t1, t2 = pair_views(net, teacher, x1, x2, objective, dev, params.precision)
            loss = objective(z1, z2, labels=gather_rows(labels.to(dev)), t1=t1, t2=t2)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pretrain {out}: loss {loss.item()} at epoch {epoch} step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if teacher is not None:
                m = 1 - (1 - params.ema) * (math.cos(math.pi * it / max(1, params.epochs * steps_per_epoch)) + 1) / 2
                ema_update(teacher, model, m)
                objective.after_step(t1, t2)
            losses.append(loss.item())
            n_spatial += int(spatial.sum())
            n_pairs += len(spatial)
        rate = 2 * n_pairs / max(1e-9, time.time() - t0)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"),
                        "spatial_fraction": n_spatial / max(1, n_pairs), "images_per_s": rate})
        log.info("pretrain %s epoch %d/%d: loss %.4f, %.0f images/s, %.0f%% spatial pairs", out.parent, epoch + 1,
                 params.epochs, history[-1]["loss"], rate, 100 * history[-1]["spatial_fraction"])
        state = {"key": key, "epoch": epoch, "history": history, "model": model.state_dict(),
                 "optimizer": opt.state_dict(), "objective": objective.state_dict(),
                 "teacher": teacher.state_dict() if teacher is not None else None}
        if rank == 0:
            atomic_save(state, ckpt_path)
        barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    final = teacher if (teacher is not None and objective.keeps_teacher) else model
    meta = {"format": FORMAT, "arch": params.backbone, "overrides": EncoderSpec("x", depth=params.depth).overrides(),
            "input_size": size, "dim": dim, "mean": list(entry.mean), "std": list(entry.std),
            "pretrain": dataclasses.asdict(params), "seed": seed, "slides": slides, "history": history}
    if rank == 0:
        atomic_save({**meta, "encoder": {k: v.detach().cpu() for k, v in final.backbone.state_dict().items()}}, out)
        write_text(json.dumps(meta, indent=1, default=str), out.parent / "history.json")
    barrier()
    return meta


def barrier() -> None:
    if world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def sources_for_scope(tiles: list[str], graphs: list[str] | None, scope: str, labels: dict[str, int] | None,
                      folds_csv: str | None) -> list[SlideSource]:
    """The slides a scope trains on: all usable stores (`all`) or fold k's training slides (`fold{k}`).

    A store's slide id is its file stem (results/tiles/{slide}.zarr); stores flagged failed/empty
    or without tiles are left out. Labels are attached only for fold scopes: `all` never sees one.
    """
    from slidemil.slides.store import open_tiles  # registers the tiles' JPEG codec with zarr

    fold = parse_scope(scope)
    keep = None if fold is None else set(training_slides(folds_csv, fold))
    by_stem = {Path(g).stem: g for g in (graphs or [])}
    out = []
    for t in tiles:
        sid = Path(t).stem
        if keep is not None and sid not in keep:
            continue
        g = open_tiles(t)
        if g.attrs.get("status", "ok") != "ok" or g["tiles"].shape[0] == 0:
            continue
        label = labels.get(sid) if (labels is not None and fold is not None) else None
        out.append(SlideSource(sid, t, by_stem.get(sid), label))
    if not out:
        raise ValueError(f"scope {scope}: no usable tile stores")
    return out
