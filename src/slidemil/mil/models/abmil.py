"""Gated attention MIL (Ilse, Tomczak & Welling, ICML 2018, "Attention-based Deep MIL").

h_i = Dropout(ReLU(W_p x_i))                         [N, H]
a_i = softmax_i( w^T (tanh(V h_i) * sigm(U h_i)) )   [N]   (the gate lets a_i be non-linear in h_i)
z   = sum_i a_i h_i                                  [H]
logits = W_c z                                       [C];  instance scores = a [N].

Departs from the authors' code (AMLab-Amsterdam/AttentionDeepMIL, binary sigmoid output + a
LeNet feature extractor) in taking frozen features and a C-way softmax head.
"""

from __future__ import annotations

import torch
from torch import nn

from slidemil.mil.bag import Bag
from slidemil.mil.models.base import MILModel, MilOutput, bag_features, projection, register_mil


@register_mil("abmil")
class GatedABMIL(MILModel):
    """Gated attention pooling; permutation invariant."""

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 128, dropout: float = 0.25,
                 attn_dim: int | None = None) -> None:
        super().__init__()
        attn_dim = attn_dim or hidden
        self.project = projection(in_dim, hidden, dropout)
        self.attn_v = nn.Linear(hidden, attn_dim)
        self.attn_u = nn.Linear(hidden, attn_dim)
        self.attn_w = nn.Linear(attn_dim, 1)
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor | Bag) -> MilOutput:
        h = self.project(bag_features(x))  # [N, H]
        gate = torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))  # [N, A]
        a = torch.softmax(self.attn_w(gate).squeeze(1), dim=0)  # [N]
        z = a @ h  # [H]
        return MilOutput(self.classifier(z), a)
