"""Training a MIL model on one fold, with model selection on the validation slides only.

One bag (slide) per optimisation step, as in ABMIL/CLAM/TransMIL: bags differ in size by orders
of magnitude, so batching would need padding and masks for no gain in the demo or on one GPU.
With `mirank: true` a step is one (positive, negative) pair instead, as HNM-WSI trains DSMIL
(each epoch pairs shuffled positive and negative bags, min(#pos, #neg) steps). One loop for every
model: the loss is the model's own (`model.loss`), plus MIRank on pairs.
The checkpoint kept is the epoch with the lowest validation loss (bag cross-entropy of the
model's logits, the same criterion for every model; ties: the earliest); the test slides are
never looked at before the final prediction, unlike papers that report the best test-set epoch.

Bags come from a mapping slide_id -> features [N, D] or `SlideBag`; `FeatureStoreBags` reads the
feature stores on access and keeps at most `cache_mb` of them in memory, so a job's peak memory
does not grow with the number of slides.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from contextlib import contextmanager
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from slidemil import __version__
from slidemil.device import resolve_device
from slidemil.config import MilTrain
from slidemil.evaluate.metrics import auc
from slidemil.mil.bag import Bag
from slidemil.mil.losses.mirank import pair_loss
from slidemil.mil.models import MIL_MODELS, MilOutput, build_mil
from slidemil.mil.params import TRAIN_KEYS

log = logging.getLogger(__name__)


@dataclass
class SlideBag:
    """A bag on the host: features [N, D] (float16 as stored, or float32), positions, graph."""

    features: np.ndarray
    coords: np.ndarray | None = None  # int [N, 2] level-0 (x, y)
    grid: np.ndarray | None = None  # int [N, 2] (col, row)
    graph: tuple[np.ndarray, np.ndarray] | None = None  # CSR (indptr, indices)
    graph_radius: int | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.features.shape)  # type: ignore[return-value]


class FeatureStoreBags(Mapping):
    """slide_id -> SlideBag read from `<features_dir>/<slide>.zarr` (+ `<graphs_dir>/<slide>.npz`).

    Bags are read when asked for; the first `cache_mb` of them stay in memory (small cohorts are
    read once), the rest are read again at each access (large cohorts stream), so peak memory is
    bounded by cache_mb plus one bag, whatever the number of slides.
    """

    def __init__(self, features_dir: str | Path, slide_ids: list[str], graphs_dir: str | Path | None = None,
                 cache_mb: float = 2048) -> None:
        import zarr

        self.features_dir = Path(features_dir)
        self.graphs_dir = Path(graphs_dir) if graphs_dir else None
        self.ids = list(slide_ids)
        self.cache: dict[str, SlideBag] = {}
        self.cache_left = float(cache_mb) * 2**20
        self.shapes = {s: tuple(zarr.open_group(str(self._path(s)), mode="r")["features"].shape) for s in self.ids}

    def _path(self, sid: str) -> Path:
        return self.features_dir / f"{sid}.zarr"

    def shape(self, sid: str) -> tuple[int, int]:
        return self.shapes[sid]  # type: ignore[return-value]

    def attrs(self, sid: str) -> dict[str, Any]:
        import zarr

        return dict(zarr.open_group(str(self._path(sid)), mode="r").attrs)

    def __getitem__(self, sid: str) -> SlideBag:
        if sid in self.cache:
            return self.cache[sid]
        import zarr

        g = zarr.open_group(str(self._path(sid)), mode="r")
        bag = SlideBag(np.asarray(g["features"][:]), np.asarray(g["coords"][:]), np.asarray(g["grid"][:]))
        gpath = self.graphs_dir / f"{sid}.npz" if self.graphs_dir else None
        if gpath is not None and gpath.exists():
            with np.load(gpath) as z:
                bag.graph, bag.graph_radius = (z["indptr"], z["indices"]), int(z["radius"])
        if bag.features.nbytes <= self.cache_left:
            self.cache[sid] = bag
            self.cache_left -= bag.features.nbytes
        return bag

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


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


def split_params(model: str, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training params, model constructor params); a training key not given takes slidemil.config.MilTrain's
    default, the model's own defaults stand."""
    train = asdict(MilTrain(**{k: v for k, v in params.items() if k in TRAIN_KEYS}))
    return train, {k: v for k, v in params.items() if k not in TRAIN_KEYS}


class Standardized(nn.Module):
    """Wraps a MIL model with feature standardisation fitted on the training instances.

    Frozen-encoder features (random or ImageNet) carry the signal in small deviations around large
    per-dimension offsets; without this, attention MIL barely moves from chance on the demo. The
    statistics are buffers, so model.pt is self-contained.
    """

    def __init__(self, inner: nn.Module, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor | Bag) -> MilOutput:
        if isinstance(x, Bag):
            return self.inner(x.with_features((x.features - self.mean) / self.std))
        return self.inner((x - self.mean) / self.std)

    def loss(self, out: MilOutput, target: torch.Tensor) -> torch.Tensor:
        return self.inner.loss(out, target)


def _features(b: np.ndarray | SlideBag) -> np.ndarray:
    return b.features if isinstance(b, SlideBag) else b


def feature_stats(bags: Mapping[str, np.ndarray | SlideBag] | list, ids: list[str] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std over all instances of the bags (float64, one bag at a time).

    bags: a list of [N, D] arrays, or a mapping with the `ids` to use (read twice, never all held).
    """
    items = (lambda: (bags[s] for s in ids)) if ids is not None else (lambda: iter(bags))
    n, total = 0, 0.0
    for b in items():
        x = _features(b).astype(np.float64)
        n, total = n + len(x), total + x.sum(0)
    mean = total / n
    var = sum(((_features(b).astype(np.float64) - mean) ** 2).sum(0) for b in items()) / n
    return mean, np.sqrt(var) + 1e-6


def load_mil(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A trained model from model.pt (standardisation included), in eval mode, and its config."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = ckpt["config"]
    inner = build_mil(cfg["model"], cfg["in_dim"], cfg["n_classes"], **cfg["model_params"])
    net = Standardized(inner, np.zeros(cfg["in_dim"]), np.ones(cfg["in_dim"]))
    net.load_state_dict(ckpt["state_dict"])
    return net.eval(), cfg


def _bag(b: np.ndarray | SlideBag, device: torch.device, sid: str = "") -> Bag:
    """Host bag -> Bag on `device`; features may be kept float16 (as stored), computed in float32."""
    x = torch.from_numpy(np.ascontiguousarray(_features(b))).to(device=device, dtype=torch.float32)
    if not isinstance(b, SlideBag):
        return Bag(x, slide_id=sid)
    return Bag(x, b.coords, b.grid, b.graph, b.graph_radius, slide_id=sid)


def _shape(bags: Mapping, sid: str) -> tuple[int, int]:
    """(N, D) of a bag without reading it when the mapping knows (FeatureStoreBags)."""
    if hasattr(bags, "shape"):
        return bags.shape(sid)
    return tuple(np.shape(_features(bags[sid])))  # type: ignore[return-value]


def _steps(train_ids: list[str], labels: dict[str, int], rng: np.random.Generator, mirank: bool) -> list[list[str]]:
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
        outs = [net(_bag(b, dev, s)) for b, s in zip(hosts, step)]
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
        since_trim += sum(_features(b).nbytes for b in hosts)
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
            logits, _ = net(_bag(bags[sid], device, sid))
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
        if _shape(bags, sid)[0] == 0:
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
    dims = {_shape(bags, s)[1] for s in ids}
    if len(dims) != 1:
        raise ValueError(f"bags have different feature dimensions {sorted(dims)}")
    in_dim = dims.pop()

    train_p, model_p = split_params(model, params)
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
            losses = train_epoch(net, opt, bags, _steps(train_ids, labels, rng, mirank), labels, train_p, dev)
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
                logits, inst = net(_bag(bags[sid], dev, sid))
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


def run_fold(features_dir: str | Path, fold_table_csv: str | Path, samples_tsv: str | Path, fold: int,
             model: str, params: dict, out_dir: str | Path, seed: int, classes: list[str], *,
             device: str = "cpu", threads: int | None = None, graphs_dir: str | Path | None = None,
             cache_mb: float = 2048) -> None:
    """Train `model` on fold `fold` and write its outputs to `out_dir`.

    Streams `<features_dir>/<slide_id>.zarr` (+ `<graphs_dir>/<slide_id>.npz`, the neighbour
    graph, when given) for the fold's slides, keeping at most `cache_mb` of features in memory
    (empty stores skipped with a warning), labels from samples_tsv (column `label`, class names in `classes`; index = class
    id), roles from the long fold table (slide_id, fold, role). Writes, each via a temp name:
    model.pt (state_dict + config), predictions.csv (slide_id, label, role, prob_<class>..., pred),
    attention.npz (test slide_id -> instance scores [N]), history.csv (epoch, train_loss,
    val_loss, val_auc).
    """
    if threads:
        torch.set_num_threads(int(threads))
    features_dir, out_dir = Path(features_dir), Path(out_dir)
    table = pd.read_csv(fold_table_csv, dtype={"slide_id": str, "role": str})
    table = table[table["fold"].astype(int) == int(fold)]
    if table.empty:
        raise ValueError(f"fold {fold} not found in {fold_table_csv}")
    samples = pd.read_csv(samples_tsv, sep="\t", dtype=str).set_index("slide_id")
    missing = sorted(set(table["slide_id"]) - set(samples.index))
    if missing:
        raise ValueError(f"slides in the fold table but not in {samples_tsv}: {missing[:10]}")
    class_index = {c: i for i, c in enumerate(classes)}

    store = FeatureStoreBags(features_dir, list(table["slide_id"]), graphs_dir, cache_mb)
    labels: dict[str, int] = {}
    roles: dict[str, str] = {}
    for sid, role in zip(table["slide_id"], table["role"]):
        label = str(samples.at[sid, "label"])
        if label not in class_index:
            raise ValueError(f"slide {sid}: label {label!r} is not one of the classes {classes}")
        if store.shape(sid)[0] == 0:  # a zero-instance bag never reaches MIL
            attrs = store.attrs(sid)
            if attrs.get("status") == "failed":
                log.warning("slide %s skipped: it failed in preprocessing (%s)", sid,
                            attrs.get("reason") or "no reason recorded")
            else:
                log.warning("slide %s skipped: no tissue tiles (empty feature store)", sid)
            continue
        labels[sid], roles[sid] = class_index[label], role

    result = train_mil(store, labels, roles, model, len(classes), params, seed, device)
    skipped = sorted(set(table["slide_id"]) - set(roles)) + result.skipped
    config = {**result.config, "classes": list(classes), "fold": int(fold), "skipped": skipped,
              "params": dict(params)}

    out_dir.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    rows = []
    for sid in sorted(result.probs):
        p = result.probs[sid]
        rows.append({"slide_id": sid, "label": classes[labels[sid]], "role": roles[sid],
                     **{f"prob_{c}": float(p[i]) for i, c in enumerate(classes)},
                     "pred": classes[int(np.argmax(p))]})
    outputs = {
        "predictions.csv": lambda t: pd.DataFrame(rows).to_csv(t, index=False),
        "history.csv": lambda t: pd.DataFrame(
            result.history, columns=["epoch", "train_loss", "val_loss", "val_auc"]).to_csv(t, index=False),
        "model.pt": lambda t: torch.save({"state_dict": result.model.state_dict(), "config": config}, t),
    }
    test_scores = {s: result.instance_scores[s] for s in sorted(result.probs) if roles[s] == "test"}

    def write_npz(t: Path) -> None:
        with open(t, "wb") as fh:  # a file handle stops numpy appending '.npz' to the temp name
            np.savez(fh, **test_scores)

    outputs["attention.npz"] = write_npz
    temps = []
    for name, write in outputs.items():
        tmp = out_dir / f".{name}.tmp-{pid}"
        write(tmp)
        temps.append((tmp, out_dir / name))
    for tmp, final in temps:
        os.replace(tmp, final)
    log.info("fold %d %s: wrote %s (%d slides, %d skipped)", fold, model, out_dir, len(rows), len(skipped))
