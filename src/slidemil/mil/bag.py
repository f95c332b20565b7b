"""The bag a MIL model sees: one slide's tile features with their positions and neighbour graph.

Models take what they need: every model reads `features`; TransMIL places tokens on `grid` for
its positional convolution (PPEG); SRMIL runs a graph network over `neighbours(radius)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from slidemil.slides.graph import neighbour_graph


@dataclass
class Bag:
    """One slide as a bag of N tiles.

    features: float [N, D] (the model's input; standardised by the training wrapper)
    coords:   int [N, 2] level-0 (x, y) top-left, or None
    grid:     int [N, 2] (col, row) on the slide's global tile grid, or None
    graph:    CSR (indptr [N+1], indices [E]) of the workflow's neighbour graph, or None
    graph_radius: Chebyshev radius `graph` was built with (graph.radius in the config)
    """

    features: torch.Tensor
    coords: np.ndarray | None = None
    grid: np.ndarray | None = None
    graph: tuple[np.ndarray, np.ndarray] | None = None
    graph_radius: int | None = None
    slide_id: str = ""
    _csr_cache: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        x = self.features
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"a MIL bag must be a non-empty [N, D] tensor, got shape {tuple(x.shape)}")
        for name in ("coords", "grid"):
            arr = getattr(self, name)
            if arr is not None and np.shape(arr) != (x.shape[0], 2):
                raise ValueError(f"bag {self.slide_id!r}: {name} shape {np.shape(arr)} != ({x.shape[0]}, 2)")

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def with_features(self, features: torch.Tensor) -> "Bag":
        """The same bag (positions, graph, cached neighbour lists) with other features [N, D']."""
        return replace(self, features=features, _csr_cache=self._csr_cache)

    def neighbours(self, radius: int) -> tuple[np.ndarray, np.ndarray]:
        """CSR (indptr [N+1], indices) of tiles within Chebyshev distance `radius`, self excluded.

        The workflow's graph is used when it was built with this radius; otherwise (e.g. SRMIL's
        radius 2 against the workflow's default graph.radius 1) it is rebuilt from `grid` and cached
        on the bag.
        """
        if self.graph is not None and self.graph_radius == radius:
            return self.graph
        if radius not in self._csr_cache:
            if self.grid is None:
                raise ValueError(f"bag {self.slide_id!r} has no grid: cannot build a radius-{radius} graph")
            self._csr_cache[radius] = neighbour_graph(self.grid, radius)
        return self._csr_cache[radius]

    def edge_index(self, radius: int, self_loops: bool = True) -> torch.Tensor:
        """Directed edges (src, dst) long [2, E] of the radius graph (both directions), + self loops."""
        indptr, indices = self.neighbours(radius)
        n = len(self)
        dst = np.repeat(np.arange(n), np.diff(indptr))  # CSR row i lists the tiles next to i
        src = np.asarray(indices)
        if self_loops:
            src, dst = np.concatenate([src, np.arange(n)]), np.concatenate([dst, np.arange(n)])
        return torch.from_numpy(np.stack([src, dst]).astype(np.int64)).to(self.features.device)
