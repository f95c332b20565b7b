"""MIL bags on the host: features per slide (`SlideBag`), read from the feature stores when asked for
(`FeatureStoreBags`, which keeps at most `cache_mb` of them in memory, so a job's peak memory does
not grow with the number of slides), a fold's bags with their labels and roles (`fold_bags`), and
the feature standardisation fitted on the training instances (`Standardized`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from slidemil.config import MilConfig
from slidemil.mil.bag import Bag
from slidemil.mil.models import MilOutput

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
                 cache_mb: float = MilConfig.cache_mb) -> None:
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
class FoldBags:
    """The slides of a fold that have a bag: their bags, label indices and roles; `skipped`: the fold's
    slides left out for an empty feature store."""

    bags: FeatureStoreBags
    labels: dict[str, int]
    roles: dict[str, str]
    skipped: list[str]


def fold_bags(features_dir: str | Path, fold_table_csv: str | Path, samples_tsv: str | Path, fold: int,
              classes: list[str], roles: tuple[str, ...] = ("train", "val", "test"),
              graphs_dir: str | Path | None = None, cache_mb: float = MilConfig.cache_mb) -> FoldBags:
    """The slides of fold `fold` whose role is in `roles` (of the long fold table: slide_id, fold, role;
    a slide of another role is never opened), labelled from samples_tsv (column `label`; index in
    `classes`), their bags streamed from `<features_dir>/<slide_id>.zarr` (+ `<graphs_dir>/<slide_id>.npz`,
    the neighbour graph, when given). An empty store (failed preprocessing, no tissue) is skipped
    with a warning: a zero-instance bag never reaches MIL."""
    table = pd.read_csv(fold_table_csv, dtype={"slide_id": str, "role": str})
    table = table[(table["fold"].astype(int) == int(fold)) & table["role"].isin(roles)]
    if table.empty:
        raise ValueError(f"fold {fold} not found in {fold_table_csv}")
    samples = pd.read_csv(samples_tsv, sep="\t", dtype=str).set_index("slide_id")
    missing = sorted(set(table["slide_id"]) - set(samples.index))
    if missing:
        raise ValueError(f"slides in the fold table but not in {samples_tsv}: {missing[:10]}")
    class_index = {c: i for i, c in enumerate(classes)}
    store = FeatureStoreBags(features_dir, list(table["slide_id"]), graphs_dir, cache_mb)
    labels: dict[str, int] = {}
    kept: dict[str, str] = {}
    for sid, role in zip(table["slide_id"], table["role"]):
        label = str(samples.at[sid, "label"])
        if label not in class_index:
            raise ValueError(f"slide {sid}: label {label!r} is not one of the classes {classes}")
        if store.shape(sid)[0] == 0:
            attrs = store.attrs(sid)
            if attrs.get("status") == "failed":
                log.warning("slide %s skipped: it failed in preprocessing (%s)", sid,
                            attrs.get("reason") or "no reason recorded")
            else:
                log.warning("slide %s skipped: no tissue tiles (empty feature store)", sid)
            continue
        labels[sid], kept[sid] = class_index[label], role
    return FoldBags(store, labels, kept, sorted(set(table["slide_id"]) - set(kept)))


def host_features(b: np.ndarray | SlideBag) -> np.ndarray:
    """Features [N, D] of a bag given as an array or a SlideBag."""
    return b.features if isinstance(b, SlideBag) else b


def device_bag(b: np.ndarray | SlideBag, device: torch.device, sid: str = "") -> Bag:
    """Host bag -> Bag on `device`; features may be kept float16 (as stored), computed in float32."""
    x = torch.from_numpy(np.ascontiguousarray(host_features(b))).to(device=device, dtype=torch.float32)
    if not isinstance(b, SlideBag):
        return Bag(x, slide_id=sid)
    return Bag(x, b.coords, b.grid, b.graph, b.graph_radius, slide_id=sid)


def bag_shape(bags: Mapping, sid: str) -> tuple[int, int]:
    """(N, D) of a bag without reading it when the mapping knows (FeatureStoreBags)."""
    if hasattr(bags, "shape"):
        return bags.shape(sid)
    return tuple(np.shape(host_features(bags[sid])))  # type: ignore[return-value]


def feature_stats(bags: Mapping[str, np.ndarray | SlideBag] | list, ids: list[str] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std over all instances of the bags (float64, one bag at a time).

    bags: a list of [N, D] arrays, or a mapping with the `ids` to use (read twice, never all held).
    """
    items = (lambda: (bags[s] for s in ids)) if ids is not None else (lambda: iter(bags))
    n, total = 0, 0.0
    for b in items():
        x = host_features(b).astype(np.float64)
        n, total = n + len(x), total + x.sum(0)
    mean = total / n
    var = sum(((host_features(b).astype(np.float64) - mean) ** 2).sum(0) for b in items()) / n
    return mean, np.sqrt(var) + 1e-6


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
