"""Supervised contrastive loss (SupCon)."""

from __future__ import annotations

import torch
from torch import Tensor

from slidemil.ssl.losses import register_objective
from slidemil.ssl.losses.base import HeadSpec, Objective, check_views, supcon_from_mask


def supcon(z1: Tensor, z2: Tensor, labels: Tensor, temperature: float = 0.07,
           base_temperature: float = 0.07) -> Tensor:
    """SupCon of L2-normalised views z1, z2 [B, D] with labels int [B] -> scalar.

    Positives of an anchor: every other row (of 2B) whose pair has the same label, its own other
    view included; denominator: every other row.
    """
    check_views(z1, z2)
    labels = labels.reshape(-1, 1).to(z1.device)
    if labels.shape[0] != z1.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {z1.shape[0]} pairs")
    return supcon_from_mask(z1, z2, torch.eq(labels, labels.T).float(), temperature, base_temperature)


@register_objective("supcon")
class SupCon(Objective):
    """SupCon (Khosla et al., NeurIPS 2020, "Supervised Contrastive Learning"), L_out form.

    Inputs: z1, z2 float [B, D], L2-normalised; labels int [B] (here: the slide label of each
    tile, i.e. every tile of a positive slide is treated as positive — a weak label, and the
    reason WeakSupCon exists). Output: scalar. Arithmetic: HobbitLong/SupContrast `SupConLoss`
    (contrast_mode 'all') on features = stack([z1, z2], 1), with its guard that anchors without
    positives contribute 0. Departure: none. Uses labels: trained per fold (scope fold{k}).
    """

    uses_labels = True
    normalize = True
    default_head = HeadSpec(hidden=None, out=128, layers=2)

    def __init__(self, temperature: float = 0.07, base_temperature: float = 0.07) -> None:
        super().__init__()
        self.temperature = temperature
        self.base_temperature = base_temperature

    def forward(self, z1, z2, labels=None, t1=None, t2=None):
        if labels is None:
            raise ValueError("supcon needs labels")
        return supcon(z1, z2, labels, self.temperature, self.base_temperature)
