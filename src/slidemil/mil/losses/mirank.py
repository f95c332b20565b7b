"""MIRank, the multiple-instance ranking loss of hard-negative-mining MIL (HNM-WSI; code:
winston52/HNM-WSI, train/utils.py `epoch_train`).

For one (positive bag, negative bag) pair of raw instance logits s_pos [N_p], s_neg [N_n]:
    MIRank = relu(margin - mean topK(s_pos) + mean topK(s_neg)),  K = 10, margin = 1.
The authors' pair loss for DSMIL (`pair_loss`) is
    0.5 * (BCE_bag(pos) + BCE_bag(neg)) / 2 + 0.5 * (BCE_max(pos) + BCE_max(neg)) / 2 + 0.1 * MIRank.
Departure: a bag with fewer than K instances uses all of them (mean over N); the authors'
torch.topk raises. Logits of shape [N, 1] (as the authors' DSMIL returns) are accepted.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _mean_topk(s: torch.Tensor, k: int) -> torch.Tensor:
    s = s.reshape(-1)
    return torch.topk(s, min(k, s.numel())).values.mean()


def mirank_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor, k: int = 10, margin: float = 1.0) -> torch.Tensor:
    """relu(margin - mean topK(pos_logits) + mean topK(neg_logits)); inputs raw logits [N] or [N, 1]."""
    return F.relu(margin - _mean_topk(pos_logits, k) + _mean_topk(neg_logits, k))


class MIRank(nn.Module):
    """MIRank as a module: forward(pos_logits [N_p], neg_logits [N_n]) -> scalar."""

    def __init__(self, k: int = 10, margin: float = 1.0) -> None:
        super().__init__()
        self.k, self.margin = k, margin

    def forward(self, pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
        return mirank_loss(pos_logits, neg_logits, self.k, self.margin)


def pair_loss(loss_pos: torch.Tensor, loss_neg: torch.Tensor, pos_logits: torch.Tensor, neg_logits: torch.Tensor,
              weight: float = 0.1, k: int = 10, margin: float = 1.0) -> torch.Tensor:
    """Loss of one (positive, negative) step: mean of the two bags' own losses + weight * MIRank.

    With DSMIL's own loss (0.5 BCE_bag + 0.5 BCE_max) this is the authors' 0.5 mean(BCE_bag) +
    0.5 mean(BCE_max) + 0.1 MIRank.
    """
    return 0.5 * (loss_pos + loss_neg) + weight * mirank_loss(pos_logits, neg_logits, k, margin)
