"""DSMIL, dual-stream MIL (Li, Li & Eliceiri, CVPR 2021, "Dual-stream multiple instance learning
network for whole slide image classification with self-supervised contrastive learning"; code:
binli123/dsmil-wsi dsmil.py; the variant here is the one HNM-WSI (winston52/HNM-WSI,
train/models/dsmil.py) trains with MIRank).

Stream 1, instance classifier: c = W_i x + b [N, C'] (C' = 1 for binary tasks, else C).
Stream 2, bag classifier over critical instances:
  f = ReLU(W_l x) [N, D];  Q = tanh(W_q f) [N, 128];  V = W_v Dropout(f) [N, D]
  m_c = argmax_i c_ic (the critical instance of class c);  q_c = tanh(W_q f_{m_c})
  A = softmax_i(Q q_c^T / sqrt(128)) [N, C'];  B = A^T V [C', D]
  bag logits = Conv1d(C', C', kernel D)(B) [C']
Loss (authors): 0.5 BCE(bag logits, y) + 0.5 BCE(max_i c_i, y) with one-hot y.

Binary tasks use C' = 1 as the authors do for Camelyon16, and expose logits [0, z]:
softmax([0, z])[1] = sigmoid(z) and CE([0, z], y) = BCE(z, y) exactly, so our C = 2 contract and
the authors' BCE arithmetic coincide. For C > 2 the C' = C outputs are trained with BCE on the
one-hot label as the authors do and read out with softmax. Instance scores and instance logits:
the raw class-1 instance logits c [N] (C' = 1), max over classes for C > 2.

Departures: dsmil-wsi's current bag classifier (2-layer query, identity values) is not used; we
follow HNM-WSI's. The authors' `BCEWithLogitsLoss(pos_weight)` bug (a flat x1.43 on every term)
is not copied. Permutation invariant up to ties in the critical instance.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from slidemil.mil.bag import Bag
from slidemil.mil.models.base import MILModel, MilOutput, bag_features, register_mil


def dsmil_bce(bag_logits: torch.Tensor, inst_logits: torch.Tensor, target: torch.Tensor,
              n_classes: int) -> torch.Tensor:
    """0.5 BCE(bag) + 0.5 BCE(max-instance), as in dsmil-wsi/HNM-WSI's epoch_train.

    bag_logits [C'], inst_logits [N, C'] raw; target: long class index; C' = 1 when n_classes == 2
    (y = target), else C' = n_classes (y = one-hot).
    """
    if n_classes == 2:
        y = target.float().view(1)
    else:
        y = F.one_hot(target.view(()), n_classes).float()
    bag = F.binary_cross_entropy_with_logits(bag_logits.view(-1), y)
    inst = F.binary_cross_entropy_with_logits(inst_logits.max(dim=0).values.view(-1), y)
    return 0.5 * bag + 0.5 * inst


@register_mil("dsmil")
class DSMIL(MILModel):
    """Dual-stream MIL: max-instance stream + critical-instance attention stream."""

    has_instance_logits = True

    def __init__(self, in_dim: int, n_classes: int, dropout: float = 0.0, query_dim: int = 128) -> None:
        super().__init__()
        self.n_classes = n_classes
        c = 1 if n_classes == 2 else n_classes
        self.instance = nn.Linear(in_dim, c)  # FCLayer
        self.lin = nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU())
        self.q = nn.Sequential(nn.Linear(in_dim, query_dim), nn.Tanh())
        self.v = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, in_dim))
        self.fcc = nn.Conv1d(c, c, kernel_size=in_dim)

    def forward(self, x: torch.Tensor | Bag) -> MilOutput:
        feats = bag_features(x)
        inst = self.instance(feats)  # [N, C']
        f = self.lin(feats)  # [N, D]
        v, q = self.v(f), self.q(f)  # [N, D], [N, Qd]
        crit = inst.argmax(dim=0)  # [C']: the authors' sort(...)[0], first of ties
        q_max = self.q(f[crit])  # [C', Qd]
        attn = torch.softmax(q @ q_max.T / math.sqrt(q.shape[1]), dim=0)  # [N, C']
        b = attn.T @ v  # [C', D]
        bag = self.fcc(b[None]).view(-1)  # [C']
        if self.n_classes == 2:
            logits, inst_logit = torch.cat([bag.new_zeros(1), bag]), inst[:, 0]
        else:
            logits, inst_logit = bag, inst.max(dim=1).values
        return MilOutput(logits, inst_logit, instance_logits=inst_logit,
                         aux={"bag_logits": bag, "inst": inst, "attn": attn})

    def loss(self, out: MilOutput, target: torch.Tensor) -> torch.Tensor:
        return dsmil_bce(out.aux["bag_logits"], out.aux["inst"], target, self.n_classes)
