"""BYOL: bootstrap your own latent (online predictor vs EMA target)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from slidemil.ssl.losses import register_objective
from slidemil.ssl.losses.base import HeadSpec, Objective, check_views


def byol_loss(p1: Tensor, p2: Tensor, t1: Tensor, t2: Tensor) -> Tensor:
    """Symmetrised BYOL loss -> scalar.

    p1, p2 float [B, D]: online predictions of views 1 and 2; t1, t2 [B, D]: target projections
    of the same views (detached here). mean_i [(2 - 2 cos(p1_i, t2_i)) + (2 - 2 cos(p2_i, t1_i))].
    """
    check_views(p1, p2)
    check_views(t1, t2)

    def one(p: Tensor, t: Tensor) -> Tensor:
        return 2 - 2 * (F.normalize(p, dim=-1) * F.normalize(t.detach(), dim=-1)).sum(dim=-1)

    return (one(p1, t2) + one(p2, t1)).mean()


@register_objective("byol")
class BYOL(Objective):
    """BYOL (Grill et al., NeurIPS 2020, "Bootstrap Your Own Latent").

    forward(p1, p2, t1=..., t2=...): p = online predictor outputs [B, D], t = EMA target projector
    outputs [B, D] (the trainer keeps the target: momentum 0.99 -> 1, cosine). Output: scalar, the
    symmetrised normalised MSE (2 - 2 cos), averaged over the batch as in the reference
    implementations (the paper sums the two directions; so do we, per sample).
    Departures: projector/predictor default 2048 -> 256 (paper 4096 -> 256).
    """

    teacher = True
    default_head = HeadSpec(hidden=2048, out=256, layers=2, bn=True, predictor_hidden=2048)

    def forward(self, z1, z2, labels=None, t1=None, t2=None):
        if t1 is None or t2 is None:
            raise ValueError("byol needs the target network's outputs t1, t2")
        return byol_loss(z1, z2, t1, t2)
