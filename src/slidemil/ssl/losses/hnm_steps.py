"""HNM-WSI's two fine-tuning steps (A: hard negatives, B: self-paced positives) as one objective."""

from __future__ import annotations

from torch import Tensor

from slidemil.ssl.losses import register_objective
from slidemil.ssl.losses.base import HeadSpec, Objective, check_views
from slidemil.ssl.losses.hnm_supcon import hnm_supcon

STEP_A, STEP_B = 0, 1


def encode_labels(instance: int, bag: int, step: int) -> int:
    """One int per row: instance pseudo label (bit 0), bag label (bit 1), step (bits 2+)."""
    return int(instance) + 2 * int(bag) + 4 * int(step)


def hnm_steps(z1: Tensor, z2: Tensor, codes: Tensor, temperature: float = 0.07, base_temperature: float = 0.07,
              mask_uncertain_neg: bool = True) -> Tensor:
    """Step-A loss of the rows coded step A + step-B loss of the rows coded step B -> scalar.

    z1, z2 float [B, D] L2-normalised views; codes int [B] from `encode_labels`. Step A (hard
    negatives + positive-slide tiles above the threshold): `hnm_supcon` with pair_mode "negative"
    (positives only among negatives) and the uncertain-negative mask; step B (self-paced positives
    + hard negatives): pair_mode "positive". Each step contrasts its own rows only, as the
    authors' separate forward passes do. Row order is free.
    """
    check_views(z1, z2)
    codes = codes.reshape(-1).to(z1.device)
    inst, bag, step = codes % 2, (codes // 2) % 2, codes // 4
    total = z1.sum() * 0.0  # a graph-connected zero when a step has no rows
    for s, pair_mode, uncertain in ((STEP_A, "negative", mask_uncertain_neg), (STEP_B, "positive", False)):
        rows = step == s
        if bool(rows.any()):
            total = total + hnm_supcon(z1[rows], z2[rows], inst[rows], bag[rows], temperature, base_temperature,
                                       pair_mode, uncertain)
    return total


@register_objective("supcon_hnm_steps")
class HNMSteps(Objective):
    """HNM-WSI's encoder fine-tuning (Huang et al., "Hard Negative Sample Mining for Whole Slide
    Image Classification"; code winston52/HNM-WSI, train/trainer.py `train`): step A = SupCon with
    positives only among negatives (pair_mode 2, uncertain negatives masked) on hard negatives +
    positive-slide tiles above the threshold; step B (after warm-up) = SupCon with positives only
    among positives (pair_mode 1) on self-paced positives + hard negatives. T = T_b = 0.07.

    Inputs: z1, z2 float [B, D]; labels int [B] codes (`encode_labels`: instance pseudo label, bag
    label, step). Slide labels 0/1 alone read as step-A rows of negative bags.
    Departure: the authors take two optimiser steps per iteration (A, then B on the updated
    weights); here one step on L_A + L_B, with both steps' rows in one forward pass (BatchNorm sees
    both). The mining that produces the codes is slidemil.hnm.mine.
    """

    uses_labels = True
    normalize = True
    default_head = HeadSpec(hidden=None, out=256, layers=2)

    def __init__(self, temperature: float = 0.07, base_temperature: float = 0.07,
                 mask_uncertain_neg: bool = True) -> None:
        super().__init__()
        self.temperature, self.base_temperature = temperature, base_temperature
        self.mask_uncertain_neg = mask_uncertain_neg

    def forward(self, z1, z2, labels=None, t1=None, t2=None):
        if labels is None:
            raise ValueError("supcon_hnm_steps needs labels (encode_labels codes)")
        return hnm_steps(z1, z2, labels, self.temperature, self.base_temperature, self.mask_uncertain_neg)
