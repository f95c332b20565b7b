import numpy as np

from slidemil.slides.graph import neighbour_graph, save_graph


def _brute(grid, r):
    d = np.abs(grid[:, None, :] - grid[None, :, :]).max(-1)
    return [sorted(np.flatnonzero((d[i] <= r) & (np.arange(len(grid)) != i))) for i in range(len(grid))]


def test_matches_brute_force_chebyshev():
    rng = np.random.default_rng(0)
    cells = rng.choice(30 * 20, size=200, replace=False)
    grid = np.stack([cells % 30, cells // 30], 1)
    for r in (1, 2):
        indptr, indices = neighbour_graph(grid, r)
        got = [list(indices[indptr[i] : indptr[i + 1]]) for i in range(len(grid))]
        assert got == _brute(grid, r)


def test_full_interior_has_eight_neighbours_and_empty_graph(tmp_path):
    yy, xx = np.mgrid[:5, :5]
    grid = np.stack([xx.ravel(), yy.ravel()], 1)
    indptr, _ = neighbour_graph(grid, 1)
    assert np.diff(indptr)[12] == 8 and np.diff(indptr)[0] == 3
    assert save_graph(tmp_path / "g.npz", np.zeros((0, 2)), 1) == 0
    with np.load(tmp_path / "g.npz") as z:
        assert z["indptr"].tolist() == [0] and z["indices"].size == 0
