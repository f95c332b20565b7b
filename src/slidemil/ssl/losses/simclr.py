"""SimCLR's NT-Xent loss."""

from __future__ import annotations

import torch
from torch import Tensor

from slidemil.ssl.losses import register_objective
from slidemil.ssl.losses.base import HeadSpec, Objective, check_views, supcon_from_mask


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1, base_temperature: float | None = None) -> Tensor:
    """NT-Xent of L2-normalised views z1, z2 [B, D] -> scalar.

    For each of the 2B rows of cat([z1, z2]) the positive is the other view of its pair and the
    denominator every other row (2B - 1 terms); the mean over the 2B anchors, times
    T / base_temperature (SupContrast's scale; None = T, i.e. plain SimCLR).
    """
    check_views(z1, z2)
    eye = torch.eye(z1.shape[0], device=z1.device)
    return supcon_from_mask(z1, z2, eye, temperature, base_temperature or temperature)


@register_objective("simclr")
class SimCLR(Objective):
    """SimCLR (Chen et al., ICML 2020, "A Simple Framework for Contrastive Learning of Visual
    Representations"): NT-Xent over the 2B views of a batch.

    Inputs: z1, z2 float [B, D], L2-normalised (the trainer normalises). Output: scalar.
    Arithmetic: SupContrast's `SupConLoss(features=stack([z1, z2], 1))` without labels
    (HobbitLong/SupContrast, as copied into BzhangURU/Paper_WeakSupCon_for_MIL/losses.py), which
    equals SimCLR's NT-Xent with `base_temperature = temperature`. Departure: none; default
    temperature 0.1 (SimCLR's CIFAR/ImageNet value 0.1-0.5; SupContrast's default is 0.07).
    """

    normalize = True
    default_head = HeadSpec(hidden=None, out=128, layers=2)

    def __init__(self, temperature: float = 0.1, base_temperature: float | None = None) -> None:
        super().__init__()
        self.temperature = temperature
        self.base_temperature = base_temperature

    def forward(self, z1, z2, labels=None, t1=None, t2=None):
        return nt_xent(z1, z2, self.temperature, self.base_temperature)
