"""Barlow Twins: redundancy reduction between the views' embeddings."""

from __future__ import annotations

import torch
from torch import Tensor

from slidemil.ssl.losses import register_objective
from slidemil.ssl.losses.base import HeadSpec, Objective, check_views
from slidemil.ssl.losses.vicreg import off_diagonal


def batch_standardise(z: Tensor, eps: float = 1e-5) -> Tensor:
    """BatchNorm1d(affine=False) in training mode: (z - mean) / sqrt(biased var + eps), per column."""
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float = 0.0051) -> Tensor:
    """Barlow Twins of projector outputs z1, z2 [B, D] -> scalar.

    c = bn(z1)^T bn(z2) / B; loss = sum_i (c_ii - 1)^2 + lambd * sum_{i != j} c_ij^2.
    As facebookresearch/barlowtwins main.py (one process, so no all_reduce of c).
    """
    check_views(z1, z2)
    c = batch_standardise(z1).T @ batch_standardise(z2) / z1.shape[0]
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = off_diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


@register_objective("barlow")
class BarlowTwins(Objective):
    """Barlow Twins (Zbontar et al., ICML 2021, "Barlow Twins: Self-Supervised Learning via
    Redundancy Reduction").

    Inputs: z1, z2 float [B, D] projector outputs, B >= 2. Output: scalar, lambda = 0.0051.
    Arithmetic: facebookresearch/barlowtwins `BarlowTwins.forward` (BatchNorm1d(affine=False) on
    each view, cross-correlation / batch size). Departures: projector defaults to
    2048-2048-2048 (authors: 8192 x 3); no all_reduce across ranks.
    """

    default_head = HeadSpec(hidden=2048, out=2048, layers=3, bn=True)

    def __init__(self, lambd: float = 0.0051) -> None:
        super().__init__()
        self.lambd = lambd

    def forward(self, z1, z2, labels=None, t1=None, t2=None):
        return barlow_twins_loss(z1, z2, self.lambd)
