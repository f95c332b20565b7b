"""WeakSupCon: weakly supervised contrastive learning with slide (bag) labels."""

from __future__ import annotations

import torch
from torch import Tensor

from slidemil.ssl.losses import register_objective
from slidemil.ssl.losses.base import HeadSpec, Objective, check_views, contrast_logits, not_self
from slidemil.ssl.losses.simclr import nt_xent


def similarity_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1, base_temperature: float = 0.07) -> Tensor:
    """L_sim of WeakSupCon on negative-slide views z1, z2 [B, D] (L2-normalised) -> scalar.

    Every other row of cat([z1, z2]) is a positive and there is no softmax denominator:
    -(T / T_b) * mean_i mean_{j != i} (s_ij - max_k s_ik) / T, s = z z^T, which for unit vectors
    (max_k s_ik = s_ii = 1) is mean over ordered pairs i != j of (1 - z_i . z_j) / T_b.
    Mirrors `SimilarityLoss(temperature=T, base_temperature=T_b)(features)` with
    features_neg=None (BzhangURU/Paper_WeakSupCon_for_MIL/losses_SimilarityLoss.py), row max
    subtraction included, so non-unit inputs give the authors' numbers too.
    """
    check_views(z1, z2)
    n = 2 * z1.shape[0]
    logits = contrast_logits(z1, z2, temperature)
    mask = not_self(n, z1.device)
    n_pos = mask.sum(1)
    n_pos = torch.where(n_pos < 1e-6, torch.ones_like(n_pos), n_pos)
    mean_log_prob_pos = (mask * logits).sum(1) / n_pos
    return (-(temperature / base_temperature) * mean_log_prob_pos).mean()


def weaksupcon(z1: Tensor, z2: Tensor, labels: Tensor, temperature: float = 0.1, base_temperature: float = 0.07,
               sim_weight: float = 1.0) -> Tensor:
    """WeakSupCon loss of views z1, z2 [B, D] (L2-normalised) of tiles with slide labels int [B].

    L = sim_weight * L_sim(rows with label 0) + L_clr(rows with label != 0), L_clr = NT-Xent with
    scale T / T_b. Rows keep their order within each group (the authors concatenate the negative
    loader's batch before the positive one's; both terms are means, so the split is what matters).
    A group absent from the batch contributes 0 (the authors' code would give NaN).
    """
    check_views(z1, z2)
    labels = labels.reshape(-1).to(z1.device)
    neg, pos = labels == 0, labels != 0
    zero = z1.sum() * 0.0  # keeps the graph (and dtype/device) when a group is empty
    l_sim = similarity_loss(z1[neg], z2[neg], temperature, base_temperature) if neg.any() else zero
    l_clr = nt_xent(z1[pos], z2[pos], temperature, base_temperature) if pos.any() else zero
    return sim_weight * l_sim + l_clr


@register_objective("weaksupcon")
class WeakSupCon(Objective):
    """WeakSupCon (Knudsen, Zhang et al. 2026, arXiv 2602.09477, "Weakly Supervised Contrastive
    Learning for Histopathology Patch Embeddings"; code BzhangURU/Paper_WeakSupCon_for_MIL).

    Inputs: z1, z2 float [B, D], L2-normalised projections (the authors' EncoderProjHead:
    Linear(D, D)-ReLU-Linear(D, 128), normalised); labels int [B], the slide label of each tile
    (0 = negative slide). Output: scalar
        L = 1.0 * L_sim(negative-slide tiles) + L_clr(positive-slide tiles),
    L_sim = mean over pairs i != j of (1 - z_i.z_j) / T_b (pulls negatives together, nothing pushes
    them from positives), L_clr = SimCLR NT-Xent scaled by T / T_b; T = 0.1, T_b = 0.07.
    Arithmetic number-for-number with the authors' `SimilarityLoss(T)(f[neg]) + SupConLoss(T)(f[pos])`,
    f = stack([z1, z2], 1). Departures: an empty group gives 0 instead of NaN; the batch
    balance (256 + 256 tiles drawn with replacement) is the sampler's job (`balance_labels`),
    not the loss's. Uses labels: trained per fold on that fold's training slides (scope fold{k}).
    """

    uses_labels = True
    normalize = True
    default_head = HeadSpec(hidden=None, out=128, layers=2)

    def __init__(self, temperature: float = 0.1, base_temperature: float = 0.07, sim_weight: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.sim_weight = sim_weight

    def forward(self, z1, z2, labels=None, t1=None, t2=None):
        if labels is None:
            raise ValueError("weaksupcon needs slide labels")
        return weaksupcon(z1, z2, labels, self.temperature, self.base_temperature, self.sim_weight)
