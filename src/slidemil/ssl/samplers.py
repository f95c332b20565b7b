"""Pair samplers, registered by name (config `pretrain.<name>.sampler`).

A sampler picks the second tile of a positive pair given the anchor and its grid neighbours;
both tiles are augmented independently afterwards. Spatial-context pairs follow Quinones Robles
et al. 2025 ("Leveraging Spatial Context for Positive Pair Sampling in Histopathology Image
Representation Learning"; no public code, so ours defines the details): the partner is a uniformly
drawn tile within Chebyshev distance r on the tile grid; a tile without neighbours pairs with
itself (an augmentation pair).
"""

from __future__ import annotations

import numpy as np

from slidemil.registry import Registry


class PairSampler:
    """partner(anchor, neighbours int [K], rng) -> (partner tile index, whether the pair is spatial).

    Built by signature: the constructor gets the pretrain entry's fields it names (radius, p, ...).
    """

    needs_graph = False  # reads the neighbour graphs (results/graphs/{slide}.npz)
    radius = 0  # Chebyshev radius of the neighbours it needs (0: none)

    def partner(self, anchor: int, neighbours: np.ndarray, rng: np.random.Generator) -> tuple[int, bool]:
        raise NotImplementedError


PAIR_SAMPLERS: Registry[type[PairSampler]] = Registry("pair sampler")
register_sampler = PAIR_SAMPLERS.register  # class decorator: @register_sampler("name")
build_sampler = PAIR_SAMPLERS.build  # build_sampler(name, offered={...}, **kwargs)


@register_sampler("augment")
class AugmentPairs(PairSampler):
    """Two augmented views of one tile (SimCLR, BYOL, ... as published)."""

    def partner(self, anchor, neighbours, rng):
        return anchor, False


@register_sampler("spatial")
class SpatialPairs(PairSampler):
    """The tile and a random neighbour within Chebyshev distance `radius` (default 1), each augmented."""

    needs_graph = True

    def __init__(self, radius: int = 1) -> None:
        if radius < 1:
            raise ValueError("spatial pairs need radius >= 1")
        self.radius = radius

    def partner(self, anchor, neighbours, rng):
        if len(neighbours) == 0:
            return anchor, False
        return int(neighbours[rng.integers(len(neighbours))]), True


@register_sampler("mixed")
class MixedPairs(SpatialPairs):
    """A spatial pair with probability `p`, else an augmentation pair (the paper's p; p = 1 is `spatial`)."""

    def __init__(self, radius: int = 1, p: float = 0.5) -> None:
        super().__init__(radius)
        if not 0 <= p <= 1:
            raise ValueError("p must be in [0, 1]")
        self.p = p

    def partner(self, anchor, neighbours, rng):
        if rng.random() < self.p:
            return super().partner(anchor, neighbours, rng)
        return anchor, False
