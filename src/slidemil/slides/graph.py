"""Patch neighbour graphs on the global tile grid (Chebyshev radius r)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slidemil.files import atomic_path


def neighbour_graph(grid: np.ndarray, radius: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr [N+1], indices) of tiles within Chebyshev distance `radius`, self excluded.

    grid: int [N, 2] (col, row). Neighbours of each tile are listed in ascending index order.
    """
    grid = np.asarray(grid, dtype=np.int64).reshape(-1, 2)
    n = len(grid)
    if n == 0:
        return np.zeros(1, np.int64), np.zeros(0, np.int64)
    span = int(grid[:, 1].max()) + 2 * radius + 1  # row extent, so keys of distinct cells never collide
    key = (grid[:, 0] + radius) * span + (grid[:, 1] + radius)
    order = np.argsort(key)
    sorted_key = key[order]
    src, dst = [], []
    for dc in range(-radius, radius + 1):
        for dr in range(-radius, radius + 1):
            if dc == 0 and dr == 0:
                continue
            want = key + dc * span + dr
            pos = np.clip(np.searchsorted(sorted_key, want), 0, n - 1)
            hit = sorted_key[pos] == want
            src.append(np.flatnonzero(hit))
            dst.append(order[pos[hit]])
    src_all, dst_all = np.concatenate(src), np.concatenate(dst)
    by = np.lexsort((dst_all, src_all))
    src_all, dst_all = src_all[by], dst_all[by]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(src_all, minlength=n))])
    return indptr.astype(np.int64), dst_all.astype(np.int64)


def save_graph(path: str | Path, grid: np.ndarray, radius: int) -> int:
    """Write graphs/{slide}.npz (indptr, indices, grid, radius); returns the number of edges."""
    indptr, indices = neighbour_graph(grid, radius)
    with atomic_path(path) as tmp:
        np.savez(tmp, indptr=indptr, indices=indices, grid=np.asarray(grid, np.int32), radius=radius)
    return len(indices)


def graphs_of_stores(tiles: list[str], outs: list[str], radius: int = 1) -> None:
    """The graph job: one graph per tile store (a batch of slides per job, `graph.slides_per_job`)."""
    if len(tiles) != len(outs):
        raise ValueError(f"{len(tiles)} --tiles but {len(outs)} --out: give one output per tile store")
    for store, out in zip(tiles, outs):
        graph_of_store(store, out, radius)


def graph_of_store(tiles: str | Path, out: str | Path, radius: int = 1) -> int:
    """The graph stage: the neighbour graph of a tile store's grid written to `out`; returns the edges."""
    import logging

    import zarr

    grid = zarr.open_group(str(tiles), mode="r")["grid"][:]
    n_edges = save_graph(out, grid, radius)
    logging.getLogger("slidemil").info("%s: %d tiles, %d directed edges at radius %d", tiles, len(grid), n_edges,
                                       radius)
    return n_edges
