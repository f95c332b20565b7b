"""SupCon variant of HNM-WSI (hard-negative mining) encoder fine-tuning."""

from __future__ import annotations

import torch
from torch import Tensor

from slidemil.ssl.losses import register_objective
from slidemil.ssl.losses.base import HeadSpec, Objective, check_views, contrast_logits, not_self

PAIR_MODES = {"all": 0, "positive": 1, "negative": 2}


def hnm_supcon(z1: Tensor, z2: Tensor, labels: Tensor, bag_labels: Tensor | None = None,
               temperature: float = 0.07, base_temperature: float = 0.07, pair_mode: str = "all",
               mask_uncertain_neg: bool = False) -> Tensor:
    """HNM-WSI's SupCon of L2-normalised views z1, z2 [B, D], instance (pseudo) labels int [B] -> scalar.

    pair_mode: "all" (same label = positive), "positive" (positives only among label-1 pairs;
    the authors' step B), "negative" (only among label-0 pairs; step A). Anchors without
    positives contribute 0 and still count in the mean over the 2B anchors (positive count + 1e-10
    in the division). mask_uncertain_neg: rows whose bag label is 1 and instance label 0 leave every
    denominator (and positive set), with + 1e-10 inside the log; needs bag_labels int [B].
    No row-max subtraction (the authors commented it out).
    """
    check_views(z1, z2)
    if pair_mode not in PAIR_MODES:
        raise ValueError(f"pair_mode must be one of {sorted(PAIR_MODES)}, got {pair_mode!r}")
    labels = labels.reshape(-1, 1).to(z1.device)
    mask = torch.eq(labels, labels.T).float()
    keep = {"all": None, "positive": labels[:, 0] == 1, "negative": labels[:, 0] == 0}[pair_mode]
    if keep is not None:
        mask = mask * keep[:, None] * keep[None, :]
    n = 2 * z1.shape[0]
    logits = contrast_logits(z1, z2, temperature, subtract_max=False)
    mask = mask.repeat(2, 2)
    logits_mask = not_self(n, z1.device)
    eps_log = 0.0
    if mask_uncertain_neg:
        if bag_labels is None:
            raise ValueError("mask_uncertain_neg needs bag_labels")
        uncertain = (bag_labels.reshape(-1).to(z1.device) == 1) & (labels[:, 0] == 0)
        logits_mask = logits_mask * (~uncertain.repeat(2)).float()[None, :]
        eps_log = 1e-10
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True) + eps_log)
    mean_log_prob_pos = (mask * log_prob).sum(1) / (mask.sum(1) + 1e-10)
    return (-(temperature / base_temperature) * mean_log_prob_pos).mean()


@register_objective("supcon_hnm")
class HNMSupCon(Objective):
    """SupCon as fine-tuned in HNM-WSI (Huang, Hu, Abousamra, Prasanna, Chen, "Hard Negative Sample
    Mining for Whole Slide Image Classification"; code winston52/HNM-WSI, train/loss/losses.py
    `SupConLoss(pair_mode, mask_uncertain_neg)`, temperature from train/config.yaml).

    Inputs: z1, z2 float [B, D], L2-normalised 256-d projections; labels int [B] instance pseudo
    labels; bag_labels int [B] (only for mask_uncertain_neg). Output: scalar. T = T_b = 0.07.
    Anchors without positives contribute 0 (but count in the mean). Step A of the authors' loop is
    pair_mode="negative", mask_uncertain_neg=True; step B pair_mode="positive".
    Departures: bag labels are passed as [B] and the uncertain mask is applied per row of both
    views (the authors' `bag_label.repeat(2, 1)[:, 0]` only has that meaning when bag_label is
    [B, 1]); the pseudo-label mining loop itself (DSMIL rounds) is not part of the loss.
    With the demo's sampler, `labels` are slide labels and `bag_labels` default to them.
    """

    uses_labels = True
    normalize = True
    default_head = HeadSpec(hidden=None, out=256, layers=2)

    def __init__(self, temperature: float = 0.07, base_temperature: float = 0.07, pair_mode: str = "all",
                 mask_uncertain_neg: bool = False) -> None:
        super().__init__()
        if pair_mode not in PAIR_MODES:
            raise ValueError(f"pair_mode must be one of {sorted(PAIR_MODES)}, got {pair_mode!r}")
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.pair_mode = pair_mode
        self.mask_uncertain_neg = mask_uncertain_neg

    def forward(self, z1, z2, labels=None, t1=None, t2=None, bag_labels=None):
        if labels is None:
            raise ValueError("supcon_hnm needs labels")
        return hnm_supcon(z1, z2, labels, bag_labels if bag_labels is not None else labels, self.temperature,
                          self.base_temperature, self.pair_mode, self.mask_uncertain_neg)
