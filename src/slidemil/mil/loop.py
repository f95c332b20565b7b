"""The MIL training loop: one fold's model trained on the training bags, the epoch selected on the
validation bags only.

One bag (slide) per optimisation step, as in ABMIL/CLAM/TransMIL: bags differ in size by orders
of magnitude, so batching would need padding and masks for no gain in the demo or on one GPU.
With `mirank: true` a step is one (positive, negative) pair instead, as HNM-WSI trains DSMIL
(each epoch pairs shuffled positive and negative bags, min(#pos, #neg) steps). One loop for every
model: the loss is the model's own (`model.loss`), plus MIRank on pairs.
The checkpoint kept is the epoch with the lowest validation loss (bag cross-entropy of the
model's logits, the same criterion for every model; ties: the earliest); the test slides are
never looked at before the final prediction, unlike papers that report the best test-set epoch.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from slidemil import __version__
from slidemil.config import MilTrain
from slidemil.device import resolve_device
from slidemil.evaluate.metrics import auc
from slidemil.mil.data import SlideBag, Standardized, bag_shape, device_bag, feature_stats, host_features
from slidemil.mil.losses.mirank import pair_loss
from slidemil.mil.models import MIL_MODELS, build_mil
from slidemil.mil.params import TRAIN_KEYS

log = logging.getLogger(__name__)


@dataclass
class MilResult:
    """A trained model (best validation epoch loaded, eval mode, on CPU) and its predictions."""

    model: nn.Module
    config: dict[str, Any]
    history: list[dict[str, float]]  # per epoch: epoch, train_loss, val_loss, val_auc
    best_epoch: int  # 1-based; the weights in `model`
    probs: dict[str, np.ndarray]  # slide_id -> class probabilities [C], every trained/evaluated slide
    instance_scores: dict[str, np.ndarray]  # slide_id -> [N] attention or instance logits
    device: str
    skipped: list[str] = field(default_factory=list)  # slides with empty bags


@contextmanager
def deterministic(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch; on CUDA also switch on deterministic kernels, restoring the global setting afterwards.

    The CPU kernels MIL uses are deterministic already, and the switch imports torch._inductor
    (3-7 s, more than a demo model's whole training), so CPU jobs skip it; tests pin that two CPU
    runs with one seed give identical weights and predictions.
    """
    torch.manual_seed(seed)
    if device.type != "cuda":
        yield
        return
    # cuBLAS needs a fixed workspace for reproducible matmuls (set before the first cuBLAS call).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    # warn_only: an op without a deterministic kernel warns instead of killing the run.
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn)


def split_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training params, model constructor params); a training key not given takes slidemil.config.MilTrain's
    default, the model's own defaults stand."""
    train = asdict(MilTrain(**{k: v for k, v in params.items() if k in TRAIN_KEYS}))
    return train, {k: v for k, v in params.items() if k not in TRAIN_KEYS}


def epoch_steps(train_ids: list[str], labels: dict[str, int], rng: np.random.Generator, mirank: bool) -> list[list[str]]:
    """One epoch's steps: single bags in random order, or (positive, negative) pairs for MIRank."""
    if not mirank:
        return [[train_ids[i]] for i in rng.permutation(len(train_ids))]
    pos = [s for s in train_ids if labels[s] == 1]
    neg = [s for s in train_ids if labels[s] == 0]
    pos, neg = [pos[i] for i in rng.permutation(len(pos))], [neg[i] for i in rng.permutation(len(neg))]
    return [[p, n] for p, n in zip(pos, neg)]


def _libc_trim() -> Callable[[], Any]:
    """glibc's malloc_trim(0), or a no-op elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return lambda: libc.malloc_trim(0)
    except (OSError, AttributeError):
        return lambda: None


_trim_heap = _libc_trim()
TRIM_EVERY_BYTES = 64 * 2**20  # host bag bytes between heap trims (a 10k x 1024 fp16 bag is 20 MiB)


def _prefetched(bags: Mapping, steps: list[list[str]]) -> Iterator[tuple[list[str], list]]:
    """(step, its host bags), the next step's bags read by a background thread meanwhile, so that
    reading a streamed bag overlaps training on the previous one (Zarr decoding releases the GIL).
    At most two steps' bags are held."""
    if not steps:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(lambda st: [bags[s] for s in st], steps[0])
        for i, step in enumerate(steps):
            got = pending.result()
            if i + 1 < len(steps):
                pending = pool.submit(lambda st: [bags[s] for s in st], steps[i + 1])
            yield step, got


def train_epoch(net: nn.Module, opt: torch.optim.Optimizer, bags: Mapping, steps: list[list[str]],
                labels: dict[str, int], train_p: dict[str, Any], dev: torch.device) -> list[float]:
    """One pass over `steps` (one bag, or a (positive, negative) pair with MIRank): the model's own
    loss, + MIRank on pairs; one optimiser step each. Returns the step losses."""
    net.train()
    losses, since_trim = [], 0
    for step, hosts in _prefetched(bags, steps):
        outs = [net(device_bag(b, dev, s)) for b, s in zip(hosts, step)]
        own = [net.loss(o, torch.tensor(labels[s], device=dev)) for o, s in zip(outs, step)]
        if len(step) == 2:  # (positive, negative): MIRank
            loss = pair_loss(own[0], own[1], outs[0].instance_logits, outs[1].instance_logits,
                             float(train_p["mirank_weight"]), int(train_p["mirank_k"]))
        else:
            loss = own[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        since_trim += sum(host_features(b).nbytes for b in hosts)
        del outs, own, loss, hosts
        # Bags differ in size, so glibc keeps the freed blocks of one step fragmented in its heaps
        # (one per thread: the prefetcher has its own) and RSS creeps up step by step; hand them back
        # once enough has passed through: trimming after every small bag doubled the demo's MIL time.
        if since_trim >= TRIM_EVERY_BYTES:
            _trim_heap()
            since_trim = 0
    return losses


def _evaluate(net: nn.Module, ids: list[str], bags: Mapping, labels: dict[str, int],
              device: torch.device) -> tuple[float, np.ndarray]:
    """Mean bag cross-entropy and probabilities [len(ids), C] over `ids` (eval mode, no grad)."""
    net.eval()
    losses, probs = [], []
    with torch.no_grad():
        for sid in ids:
            logits, _ = net(device_bag(bags[sid], device, sid))
            y = torch.tensor([labels[sid]], device=device)
            losses.append(F.cross_entropy(logits[None], y).item())
            probs.append(torch.softmax(logits, dim=0).cpu().numpy())
    return float(np.mean(losses)), np.stack(probs)


def train_mil(bags: Mapping[str, np.ndarray | SlideBag], labels: dict[str, int], roles: dict[str, str],
              model: str, n_classes: int, params: dict, seed: int, device: str = "cpu") -> MilResult:
    """Train MIL model `model` on the 'train' bags, select the epoch on the 'val' bags.

    bags: slide_id -> features [N, D] (float16/32) or SlideBag (features + grid + graph, which
    TransMIL and SRMIL need); labels: slide_id -> class index in [0, C); roles: slide_id ->
    'train' | 'val' | 'test'. params: training keys (epochs, lr, weight_decay for AdamW; mirank,
    mirank_k, mirank_weight) and the model's own. Empty bags are skipped with a warning.
    Returns probabilities and instance scores for every non-empty slide with a role.
    """
    ids, skipped = [], []
    for sid in sorted(roles):
        if sid not in bags:
            raise KeyError(f"slide {sid!r} has a role but no bag")
        if bag_shape(bags, sid)[0] == 0:
            log.warning("slide %s has no tiles (empty bag): skipped", sid)
            skipped.append(sid)
            continue
        if roles[sid] not in ("train", "val", "test"):
            raise ValueError(f"slide {sid!r}: role must be train/val/test, got {roles[sid]!r}")
        if sid not in labels or not 0 <= labels[sid] < n_classes:
            raise ValueError(f"slide {sid!r}: label {labels.get(sid)!r} is not a class index < {n_classes}")
        ids.append(sid)
    train_ids = [s for s in ids if roles[s] == "train"]
    val_ids = [s for s in ids if roles[s] == "val"]
    if not train_ids:
        raise ValueError("no usable training slide: every training slide of this fold failed preprocessing or has no "
                         "tissue (see results/qc/cohort.tsv); fix or drop those slides, or use fewer folds")
    if not val_ids:
        log.warning("no validation slides: the last epoch is kept (no model selection)")
    dims = {bag_shape(bags, s)[1] for s in ids}
    if len(dims) != 1:
        raise ValueError(f"bags have different feature dimensions {sorted(dims)}")
    in_dim = dims.pop()

    train_p, model_p = split_params(params)
    mirank = bool(train_p["mirank"])
    if mirank:
        if n_classes != 2 or not MIL_MODELS[model].has_instance_logits:
            raise ValueError(f"mirank needs two classes and a model with instance logits ({model}, C={n_classes})")
        if not {labels[s] for s in train_ids} >= {0, 1}:
            raise ValueError("mirank needs positive and negative training bags")
    dev = resolve_device(device)
    history: list[dict[str, float]] = []
    with deterministic(seed, dev):
        mean, std = feature_stats(bags, train_ids)
        net = Standardized(build_mil(model, in_dim, n_classes, **model_p), mean, std).to(dev)
        opt = torch.optim.AdamW(net.parameters(), lr=float(train_p["lr"]),
                                weight_decay=float(train_p["weight_decay"]))
        rng = np.random.default_rng(seed)
        best_loss, best_epoch = float("inf"), 0
        best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        bar = tqdm(range(1, int(train_p["epochs"]) + 1), desc=f"mil {model}", file=sys.stderr,
                   mininterval=2.0)
        for epoch in bar:
            losses = train_epoch(net, opt, bags, epoch_steps(train_ids, labels, rng, mirank), labels, train_p, dev)
            row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": float("nan"),
                   "val_auc": float("nan")}
            if val_ids:
                row["val_loss"], val_prob = _evaluate(net, val_ids, bags, labels, dev)
                row["val_auc"] = auc(np.array([labels[s] for s in val_ids]), val_prob)
            history.append(row)
            bar.set_postfix(train=f"{row['train_loss']:.3f}", val=f"{row['val_loss']:.3f}")
            # Strict '<' keeps the earliest of tied epochs; without val slides the last epoch wins.
            if not val_ids or row["val_loss"] < best_loss:
                best_loss, best_epoch = row["val_loss"], epoch
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        bar.close()

        net.load_state_dict(best_state)
        net.eval()
        probs, scores = {}, {}
        with torch.no_grad():
            for sid in ids:
                logits, inst = net(device_bag(bags[sid], dev, sid))
                probs[sid] = torch.softmax(logits, dim=0).cpu().numpy().astype(np.float64)
                scores[sid] = inst.cpu().numpy().astype(np.float32)
    log.info("%s: best validation epoch %d of %d (val loss %.4f)", model, best_epoch,
             len(history), best_loss)
    config = {"model": model, "in_dim": int(in_dim), "n_classes": int(n_classes),
              "model_params": model_p, "train_params": train_p, "seed": int(seed),
              "best_epoch": int(best_epoch), "device": str(dev), "slidemil_version": __version__,
              "n_train": len(train_ids), "n_val": len(val_ids),
              "n_test": sum(roles[s] == "test" for s in ids), "skipped": skipped}
    return MilResult(net.cpu(), config, history, best_epoch, probs, scores, str(dev), skipped)
