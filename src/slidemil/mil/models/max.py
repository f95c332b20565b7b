"""Max pooling (mi-Net with max pooling; Wang et al., Pattern Recognition 2018).

x [N, D] -> per-instance logits MLP(x_i) [N, C]; bag logit of class c = max_i logit_ic [C]: each
class takes its evidence from its own strongest instance. Instance scores and instance logits:
class-1 log-odds [N] (max logit for C > 2). No authors' code to depart from.
"""

from __future__ import annotations

import torch
from torch import nn

from slidemil.mil.bag import Bag
from slidemil.mil.models.base import MILModel, MilOutput, bag_features, instance_evidence, projection, register_mil


@register_mil("max")
class MaxMIL(MILModel):
    """Per-class max of instance logits; permutation invariant."""

    has_instance_logits = True

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 128, dropout: float = 0.25) -> None:
        super().__init__()
        self.instance = nn.Sequential(projection(in_dim, hidden, dropout), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor | Bag) -> MilOutput:
        inst = self.instance(bag_features(x))  # [N, C]
        ev = instance_evidence(inst)
        return MilOutput(inst.max(dim=0).values, ev, instance_logits=ev)
