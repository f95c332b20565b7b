"""Tiles for pretraining, read straight from the per-slide Zarr stores.

A pair item reads just its two tiles: the JPEG bytes of one tile are sliced out of its shard
file through the shard index (cached per shard) and decoded with libjpeg-turbo; stores of
another layout fall back to zarr's reader. Items are drawn shuffled across slides, seeded per
(seed, epoch), and the partner of a tile is drawn from a generator seeded per (seed, epoch,
item), so the pairs do not depend on the number of DataLoader workers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slidemil.ssl.samplers import PairSampler

log = logging.getLogger(__name__)


class TileReader:
    """Random single-tile reads from a tile store made by slidemil.slides.store.create_tile_arrays.

    read(i) -> uint8 [T, T, 3]. Opened lazily so that each DataLoader worker has its own handle.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta = json.loads((self.path / "tiles" / "zarr.json").read_text())
        self.shape = tuple(meta["shape"])
        self.fill = int(meta.get("fill_value") or 0)
        codecs = meta["codecs"]
        c = codecs[0] if len(codecs) == 1 else {}
        cfg = c.get("configuration", {})
        self.direct = (c.get("name") == "sharding_indexed" and cfg.get("index_location", "end") == "end"
                       and [x["name"] for x in cfg.get("codecs", [])] == ["slidemil.jpeg"]
                       and [x["name"] for x in cfg.get("index_codecs", [])] == ["bytes", "crc32c"]
                       and cfg.get("chunk_shape", [0])[0] == 1
                       and meta["chunk_key_encoding"]["name"] == "default")
        self.per_shard = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        self.sep = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
        self._index: dict[int, np.ndarray | None] = {}
        self._zarr = None

    def __len__(self) -> int:
        return self.shape[0]

    def _shard_index(self, shard: int) -> np.ndarray | None:
        if shard not in self._index:
            key = self.sep.join(["c", str(shard), *["0"] * (len(self.shape) - 1)])
            f = self.path / "tiles" / key
            if not f.exists():
                self._index[shard] = None
            else:
                nbytes = self.per_shard * 16 + 4
                with open(f, "rb") as fh:
                    fh.seek(-nbytes, 2)
                    self._index[shard] = np.frombuffer(fh.read(nbytes)[:-4], dtype="<u8").reshape(-1, 2)
        return self._index[shard]

    def read(self, i: int) -> np.ndarray:
        if not self.direct:
            if self._zarr is None:
                import zarr

                self._zarr = zarr.open_group(str(self.path), mode="r")["tiles"]
            return np.asarray(self._zarr[i])
        import simplejpeg

        shard, k = divmod(int(i), self.per_shard)
        index = self._shard_index(shard)
        if index is None or index[k, 0] == np.iinfo(np.uint64).max:
            return np.full(self.shape[1:], self.fill, np.uint8)
        off, n = int(index[k, 0]), int(index[k, 1])
        key = self.sep.join(["c", str(shard), *["0"] * (len(self.shape) - 1)])
        with open(self.path / "tiles" / key, "rb") as fh:
            fh.seek(off)
            data = fh.read(n)
        return simplejpeg.decode_jpeg(data, colorspace="RGB")


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
