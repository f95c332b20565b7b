"""Base class of pretraining objectives and the SupContrast arithmetic several of them share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class HeadSpec:
    """Projection head after the backbone: `layers` Linear layers, hidden width `hidden`, output `out`.

    `bn`: BatchNorm1d after each hidden Linear (BYOL, VICReg, Barlow Twins); `predictor`: BYOL's
    extra online MLP (`predictor_hidden` wide) on top of the projection.
    """

    hidden: int | None = None  # None: the backbone's output width (e.g. 512-512-ReLU-128 for ResNet18)
    out: int = 128
    layers: int = 2
    bn: bool = False
    predictor_hidden: int | None = None


class Objective(nn.Module):
    """A pretraining loss. Subclasses set the class attributes and implement `forward`.

    forward(z1, z2, labels=None, t1=None, t2=None) -> scalar loss, with z1, z2 float [B, D] the
    (projected) embeddings of the two views of B pairs; t1, t2 the EMA teacher's outputs of the
    same views (objectives with `teacher = True` only); labels int [B] (`uses_labels` only).
    The trainer builds an objective by signature: a constructor parameter `out_dim` receives the
    projection head's output width.
    """

    uses_labels: ClassVar[bool] = False  # needs slide labels: trained per fold on training slides only
    normalize: ClassVar[bool] = False  # the trainer L2-normalises projections before the loss
    teacher: ClassVar[bool] = False  # the trainer keeps an EMA teacher and passes t1, t2
    keeps_teacher: ClassVar[bool] = False  # the encoder written is the teacher's backbone, not the student's
    default_head: ClassVar[HeadSpec] = HeadSpec()

    def forward(self, z1: Tensor, z2: Tensor, labels: Tensor | None = None,
                t1: Tensor | None = None, t2: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, t1: Tensor | None, t2: Tensor | None) -> None:
        """Update running statistics after an optimiser step (DINO's centre); default: nothing."""


def check_views(z1: Tensor, z2: Tensor) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"views must be [B, D] of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")


def contrast_logits(z1: Tensor, z2: Tensor, temperature: float, subtract_max: bool = True) -> Tensor:
    """[2B, 2B] logits of the view-major rows cat([z1, z2]) against themselves, / temperature.

    As SupContrast: row max (self-similarity included, detached) subtracted when `subtract_max`;
    it cancels in every log-softmax and only guards against overflow.
    """
    feats = torch.cat([z1, z2], dim=0)
    logits = torch.div(torch.matmul(feats, feats.T), temperature)
    if subtract_max:
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    return logits


def not_self(n: int, device: torch.device) -> Tensor:
    """float [n, n]: 1 everywhere but the diagonal (an anchor is never its own contrast)."""
    return 1.0 - torch.eye(n, device=device)


def supcon_from_mask(z1: Tensor, z2: Tensor, pair_mask: Tensor, temperature: float,
                     base_temperature: float) -> Tensor:
    """SupContrast's loss (Khosla et al. 2020, Tian's code) for a [B, B] positive mask of pairs.

    pair_mask[i, j] = 1 when pairs i and j are positives of each other (eye(B) gives SimCLR).
    Rows cat([z1, z2]); denominator: every other row; anchors without positives contribute 0
    (SupContrast: positive count clamped to 1) and still count in the mean over 2B anchors.
    Returns -(T / T_b) * mean over anchors of the mean log-probability of their positives.
    """
    n = 2 * z1.shape[0]
    logits = contrast_logits(z1, z2, temperature)
    off_diag = not_self(n, z1.device)
    mask = pair_mask.float().repeat(2, 2) * off_diag
    exp_logits = torch.exp(logits) * off_diag
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    n_pos = mask.sum(1)
    n_pos = torch.where(n_pos < 1e-6, torch.ones_like(n_pos), n_pos)
    mean_log_prob_pos = (mask * log_prob).sum(1) / n_pos
    return (-(temperature / base_temperature) * mean_log_prob_pos).mean()
