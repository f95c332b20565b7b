"""Pair samplers, batch augmentations and the Zarr pair dataset."""

import numpy as np
import pytest
import torch
import zarr

from slidemil.slides.graph import save_graph
from slidemil.ssl.augment import AugmentParams, BatchAugment, hed_jitter
from slidemil.slides.tile_reader import TileReader
from slidemil.ssl.data import PairDataset, SlideSource, epoch_plan
from slidemil.ssl.samplers import build_sampler
from slidemil.slides.store import atomic_dir, create_tile_arrays, open_tiles, write_index_arrays


def make_store(path, grid, size=16, seed=0, label=None):
    """A tile store whose tile i is filled with value i (so reads can be traced) on the given grid."""
    n = len(grid)
    with atomic_dir(path) as tmp:
        g = zarr.open_group(tmp, mode="w", zarr_format=3)
        t = create_tile_arrays(g, n, size, shard_tiles=4)
        t[:] = np.broadcast_to((np.arange(n) * 7 % 250).astype(np.uint8)[:, None, None, None], (n, size, size, 3))
        write_index_arrays(g, np.asarray(grid) * size, grid)
        g.attrs.update({"slide_id": str(path), "status": "ok"})
    return str(path)


def test_tile_reader_matches_zarr(tmp_path):
    grid = [(i % 5, i // 5) for i in range(11)]
    p = make_store(tmp_path / "a.zarr", grid)
    r = TileReader(p)
    assert r.direct and len(r) == 11
    z = open_tiles(p)["tiles"]
    for i in range(11):
        np.testing.assert_array_equal(r.read(i), z[i])


def test_samplers():
    rng = np.random.default_rng(0)
    nb = np.array([3, 4, 9])
    assert build_sampler("augment").partner(5, nb, rng) == (5, False)
    spatial = build_sampler("spatial", radius=1)
    assert all(spatial.partner(5, nb, rng)[0] in nb for _ in range(20))
    assert spatial.partner(5, np.zeros(0, np.int64), rng) == (5, False)  # isolated tile: its own pair
    mixed = build_sampler("mixed", radius=1, p=0.3)
    frac = np.mean([mixed.partner(5, nb, rng)[1] for _ in range(2000)])
    assert 0.25 < frac < 0.35
    with pytest.raises(KeyError, match="unknown pair sampler"):
        build_sampler("nope")


def test_spatial_pairs_are_grid_neighbours_and_read_two_tiles(tmp_path):
    grid = [(c, r) for r in range(4) for c in range(4)]
    p = make_store(tmp_path / "a.zarr", grid)
    save_graph(tmp_path / "a.npz", np.array(grid), 1)
    ds = PairDataset([SlideSource("a", p, str(tmp_path / "a.npz"))], build_sampler("spatial", radius=1), 4, 16, 0)
    ds.set_epoch(0)
    reads = []
    orig = ds.readers[0].read
    ds.readers[0].read = lambda i: reads.append(i) or orig(i)
    for k in range(len(ds)):
        reads.clear()
        a, b, label, spatial = ds[k]
        assert len(reads) == 2 and bool(spatial)
        i, j = reads
        assert max(abs(grid[i][0] - grid[j][0]), abs(grid[i][1] - grid[j][1])) == 1
        assert int(label) == -1
    # radius 2 from the same store: the graph file (radius 1) is not used, the grid is
    ds2 = PairDataset([SlideSource("a", p, str(tmp_path / "a.npz"))], build_sampler("spatial", radius=2), 4, 16, 0)
    assert ds2.graphs[0][0][-1] > ds.graphs[0][0][-1]


def test_pairs_do_not_depend_on_workers_and_balance(tmp_path):
    grid = [(c, r) for r in range(3) for c in range(3)]
    sources = [SlideSource("n", make_store(tmp_path / "n.zarr", grid), label=0),
               SlideSource("p", make_store(tmp_path / "p.zarr", grid[:5]), label=1)]
    ds = PairDataset(sources, build_sampler("mixed", radius=1, p=0.5), 4, 12, seed=3, balance_labels=True)
    ds.set_epoch(1)
    runs = []
    for workers in (0, 2):
        dl = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers)
        runs.append([torch.cat([a.flatten(), b.flatten(), lab]) for a, b, lab, _ in dl])
    for x, y in zip(*runs):
        assert torch.equal(x, y)
    plan = ds.plan.reshape(-1, 4, 2)
    assert (plan[:, :2, 0] == 0).all() and (plan[:, 2:, 0] == 1).all()  # half negative, half positive slides
    # unbalanced plans are permutations of distinct tiles, different per epoch
    a = epoch_plan(np.array([9, 5]), np.array([0, 1]), 12, 4, 0, 0, False)
    b = epoch_plan(np.array([9, 5]), np.array([0, 1]), 12, 4, 0, 1, False)
    assert len({tuple(r) for r in a}) == 12 and not np.array_equal(a, b)


def test_batch_augment_is_seeded_and_shaped():
    tiles = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8)
    aug = BatchAugment(AugmentParams(), 24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = aug(tiles, torch.Generator().manual_seed(0))
    y = aug(tiles, torch.Generator().manual_seed(0))
    z = aug(tiles, torch.Generator().manual_seed(1))
    assert x.shape == (6, 3, 24, 24) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, y) and not torch.equal(x, z)


def test_geometric_only_augment_permutes_pixels():
    """Full-size crops + flips + 90-degree turns move pixels but never change them."""
    tiles = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8)
    p = AugmentParams(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_p=0, hed_p=0, grayscale_p=0, blur_p=0)
    x = BatchAugment(p, 16, (0, 0, 0), (1, 1, 1))(tiles, torch.Generator().manual_seed(0))
    src = tiles.permute(0, 3, 1, 2).float() / 255
    for i in range(8):
        torch.testing.assert_close(x[i].flatten().sort().values, src[i].flatten().sort().values, atol=1e-5, rtol=0)


def test_hed_jitter_identity_and_stain_shift():
    x = torch.rand(2, 3, 8, 8) * 0.8 + 0.1
    torch.testing.assert_close(hed_jitter(x, torch.ones(2, 3), torch.zeros(2, 3)), x, atol=1e-5, rtol=0)
    more_h = hed_jitter(x, torch.tensor([[1.5, 1.0, 1.0]] * 2), torch.zeros(2, 3))
    assert (more_h.mean(dim=(0, 2, 3)) < x.mean(dim=(0, 2, 3))).all()  # more haematoxylin: darker everywhere
