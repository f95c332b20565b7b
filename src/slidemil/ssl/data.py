"""Tiles for pretraining, read straight from the per-slide Zarr stores.

A pair item reads just its two tiles (slidemil.slides.tile_reader.TileReader). Items are drawn
shuffled across slides, seeded per (seed, epoch), and the partner of a tile is drawn from a
generator seeded per (seed, epoch, item), so the pairs do not depend on the number of DataLoader
workers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slidemil.slides.tile_reader import TileReader
from slidemil.ssl.samplers import PairSampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideSource:
    """One slide for pretraining: its tile store, neighbour graph (optional) and label (optional)."""

    slide_id: str
    tiles: str
    graph: str | None = None
    label: int | None = None


def slide_neighbours(source: SlideSource, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, indices) of tiles within Chebyshev `radius`: the graph file when its radius
    matches, else rebuilt from the store's grid (slidemil.slides.graph.neighbour_graph)."""
    from slidemil.slides.graph import neighbour_graph

    if source.graph and Path(source.graph).exists():
        with np.load(source.graph) as z:
            if int(z["radius"]) == radius:
                return z["indptr"], z["indices"]
            grid = z["grid"]
    else:
        from slidemil.slides.store import open_tiles

        grid = np.asarray(open_tiles(source.tiles)["grid"][:])
    return neighbour_graph(grid, radius)


def item_rng(seed: int, epoch: int, item: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, item, 0x5EED])


def epoch_plan(n_tiles: np.ndarray, labels: np.ndarray, n_items: int, batch_size: int, seed: int, epoch: int,
               balance_labels: bool) -> np.ndarray:
    """int64 [n_batches * batch_size, 2] (slide, tile) rows for one epoch, shuffled across slides.

    Without `balance_labels`: a seeded permutation of all tiles, cut to `n_items` (whole batches).
    With it (WeakSupCon): every batch is batch_size / 2 tiles of negative slides then batch_size / 2
    of positive slides, each drawn uniformly with replacement from its group, as the authors'
    two RandomSamplerWithReplacement loaders.
    """
    rng = np.random.default_rng([seed, epoch, 0xE90C])
    slide_of = np.repeat(np.arange(len(n_tiles)), n_tiles)
    tile_of = np.concatenate([np.arange(n) for n in n_tiles]) if len(n_tiles) else np.zeros(0, np.int64)
    n_batches = max(1, n_items // batch_size)
    if not balance_labels:
        n_batches = max(1, min(n_batches, len(slide_of) // batch_size))
        pick = rng.permutation(len(slide_of))[: n_batches * batch_size]
        return np.stack([slide_of[pick], tile_of[pick]], 1).astype(np.int64)
    tile_label = labels[slide_of]
    groups = [np.flatnonzero(tile_label == 0), np.flatnonzero(tile_label != 0)]
    if any(len(gr) == 0 for gr in groups):
        raise ValueError("balance_labels needs tiles of both negative and positive slides")
    half = batch_size // 2
    rows = []
    for _ in range(n_batches):
        for gr, k in zip(groups, (half, batch_size - half)):
            pick = gr[rng.integers(0, len(gr), k)]
            rows.append(np.stack([slide_of[pick], tile_of[pick]], 1))
    return np.concatenate(rows).astype(np.int64)


class PairDataset(torch.utils.data.Dataset):
    """Item k of the current epoch -> (tile_a uint8 [T,T,3], tile_b uint8 [T,T,3], label int64, spatial bool).

    label: the slide's label (-1 when unknown). Call `set_epoch(e)` before each epoch (the main
    process does, before creating the iterator, so workers see the new plan).
    """

    def __init__(self, sources: list[SlideSource], sampler: PairSampler, batch_size: int, items_per_epoch: int,
                 seed: int, balance_labels: bool = False) -> None:
        self.sources, self.sampler = sources, sampler
        self.batch_size, self.items_per_epoch, self.seed = batch_size, items_per_epoch, seed
        self.balance_labels = balance_labels
        self.readers = [TileReader(s.tiles) for s in sources]
        self.n_tiles = np.array([len(r) for r in self.readers], np.int64)
        self.labels = np.array([-1 if s.label is None else int(s.label) for s in sources], np.int64)
        self.graphs = [slide_neighbours(s, sampler.radius) if sampler.radius else None for s in sources]
        self.plan = np.zeros((0, 2), np.int64)
        self.epoch = -1
        if self.n_tiles.sum() < 1:
            raise ValueError("no tiles to pretrain on")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.plan = epoch_plan(self.n_tiles, self.labels, self.items_per_epoch, self.batch_size, self.seed, epoch,
                               self.balance_labels)

    def __len__(self) -> int:
        return len(self.plan)

    def partner(self, slide: int, tile: int, rng: np.random.Generator) -> tuple[int, bool]:
        g = self.graphs[slide]
        nb = g[1][g[0][tile]: g[0][tile + 1]] if g is not None else np.zeros(0, np.int64)
        return self.sampler.partner(tile, nb, rng)

    def __getitem__(self, k: int):
        slide, tile = (int(v) for v in self.plan[k])
        j, spatial = self.partner(slide, tile, item_rng(self.seed, self.epoch, k))
        reader = self.readers[slide]
        a = reader.read(tile)
        b = a if j == tile else reader.read(j)
        return torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(np.ascontiguousarray(b)), \
            torch.tensor(self.labels[slide]), torch.tensor(spatial)
