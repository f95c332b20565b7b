"""Mean pooling, the classic MIL baseline (e.g. Wang et al., "Revisiting multiple instance neural
networks", Pattern Recognition 2018, mi-Net with mean pooling).

x [N, D] -> h_i = Dropout(ReLU(W_p x_i)) [N, H] -> per-instance logits W h_i [N, C];
logits = mean_i(W h_i) [C] (= W mean_i h_i: the head is linear). Instance scores and instance
logits: class-1 log-odds [N] (max logit for C > 2). No authors' code to depart from.
"""

from __future__ import annotations

import torch
from torch import nn

from slidemil.mil.bag import Bag
from slidemil.mil.models.base import MILModel, MilOutput, bag_features, instance_evidence, projection, register_mil


@register_mil("mean")
class MeanMIL(MILModel):
    """Mean of per-instance logits; permutation invariant."""

    has_instance_logits = True

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 128, dropout: float = 0.25) -> None:
        super().__init__()
        self.project = projection(in_dim, hidden, dropout)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor | Bag) -> MilOutput:
        inst = self.head(self.project(bag_features(x)))  # [N, C]
        ev = instance_evidence(inst)
        return MilOutput(inst.mean(dim=0), ev, instance_logits=ev)
