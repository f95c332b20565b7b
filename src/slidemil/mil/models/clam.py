"""CLAM-SB and CLAM-MB (Lu et al., Nature Biomedical Engineering 2021, "Data-efficient and weakly
supervised computational pathology on whole-slide images"; code: mahmoodlab/CLAM,
models/model_clam.py and utils/core_utils.py). Both live here: MB is SB with one attention branch
and one bag classifier per class.

x [N, D] -> h = Dropout(ReLU(W_1 x)) [N, H] (H = 512, "small")
A_raw = W_c (tanh(V h) * sigm(U h)) [K, N]  (K = 1 for SB, C for MB; attention dim 256)
A = softmax over N [K, N];  M = A h [K, H]
SB: logits = W M [C];  MB: logits_c = w_c . M_c [C]
Instance clustering (training only): for each class c whose instance classifier is trained, the
k_sample most attended instances of branch c are class-c "positives" and the k_sample least
attended its "negatives" for a 2-way Linear(H, 2) instance classifier (cross-entropy); out of the
true class (subtyping tasks only) the top-k are negatives. Loss = bag_weight * CE(bag) +
(1 - bag_weight) * instance loss, bag_weight = 0.7; with subtyping the instance loss is averaged
over the C classifiers.

Departures from the authors' code: the attention net's dropout uses `dropout` (theirs: a fixed
0.25 whenever dropout is on); the instance loss is always cross-entropy (their optional smooth
top-1 SVM needs the `topk` package); bags with fewer than k_sample tiles use k = N (theirs fail
in torch.topk); subtyping defaults to C > 2 (theirs is a flag). Instance scores: softmax attention
[N] (SB), branch of class 1 for binary MB, of the predicted class otherwise.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from slidemil.mil.bag import Bag
from slidemil.mil.models.base import MILModel, MilOutput, bag_features, projection, register_mil


class GatedAttention(nn.Module):
    """CLAM's Attn_Net_Gated: h [N, H] -> raw attention [N, K]."""

    def __init__(self, hidden: int, attn_dim: int, dropout: float, n_branches: int) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(hidden, attn_dim), nn.Tanh(), nn.Dropout(dropout))
        self.b = nn.Sequential(nn.Linear(hidden, attn_dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.c = nn.Linear(attn_dim, n_branches)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.c(self.a(h) * self.b(h))


def clam_instance_loss(attn: torch.Tensor, h: torch.Tensor, classifiers: nn.ModuleList, target: int,
                       k_sample: int, subtyping: bool) -> torch.Tensor:
    """CLAM's instance clustering loss for one bag.

    attn: softmaxed attention [K, N] (K = 1: one branch shared by all classes; K = C: per class);
    h: instance embeddings [N, H]; classifiers: C Linear(H, 2); target: the bag's class.
    In-the-class branch: top-k -> 1, bottom-k -> 0; out-of-the-class (subtyping only): top-k -> 0.
    Ties in attention are broken as torch.topk breaks them.
    """
    k = min(k_sample, h.shape[0])
    total = h.new_zeros(())
    for c, clf in enumerate(classifiers):
        a = attn[c if attn.shape[0] > 1 else 0]
        top = h[torch.topk(a, k).indices]
        if c == target:
            bottom = h[torch.topk(-a, k).indices]
            logits = clf(torch.cat([top, bottom]))
            labels = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(h.device)
        elif subtyping:
            logits, labels = clf(top), torch.zeros(k, dtype=torch.long, device=h.device)
        else:
            continue
        total = total + F.cross_entropy(logits, labels)
    return total / len(classifiers) if subtyping else total


@register_mil("clam_sb")
class ClamSB(MILModel):
    """CLAM single-branch: one gated attention, C-way bag classifier, C instance classifiers."""

    n_branches_per_class = False

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 512, attn_dim: int = 256,
                 dropout: float = 0.25, k_sample: int = 8, bag_weight: float = 0.7,
                 subtyping: bool | None = None) -> None:
        super().__init__()
        self.n_classes, self.k_sample, self.bag_weight = n_classes, k_sample, bag_weight
        self.subtyping = n_classes > 2 if subtyping is None else bool(subtyping)
        branches = n_classes if self.n_branches_per_class else 1
        self.project = projection(in_dim, hidden, dropout)
        self.attention = GatedAttention(hidden, attn_dim, dropout, branches)
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden, 2) for _ in range(n_classes))
        self._build_head(hidden, n_classes)

    def _build_head(self, hidden: int, n_classes: int) -> None:
        self.classifier = nn.Linear(hidden, n_classes)

    def _head(self, m: torch.Tensor) -> torch.Tensor:
        return self.classifier(m[0])  # m [1, H] -> [C]

    def forward(self, x: torch.Tensor | Bag) -> MilOutput:
        h = self.project(bag_features(x))  # [N, H]
        attn = torch.softmax(self.attention(h).T, dim=1)  # [K, N]
        logits = self._head(attn @ h)  # [C]
        if attn.shape[0] == 1:
            scores = attn[0]
        else:
            scores = attn[1] if self.n_classes == 2 else attn[int(logits.argmax())]
        return MilOutput(logits, scores, aux={"attn": attn, "h": h})

    def loss(self, out: MilOutput, target: torch.Tensor) -> torch.Tensor:
        bag = F.cross_entropy(out.logits[None], target.view(1))
        inst = clam_instance_loss(out.aux["attn"], out.aux["h"], self.instance_classifiers,
                                  int(target), self.k_sample, self.subtyping)
        return self.bag_weight * bag + (1 - self.bag_weight) * inst


@register_mil("clam_mb")
class ClamMB(ClamSB):
    """CLAM multi-branch: one attention branch and one Linear(H, 1) bag classifier per class."""

    n_branches_per_class = True

    def _build_head(self, hidden: int, n_classes: int) -> None:
        self.classifiers = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(n_classes))

    def _head(self, m: torch.Tensor) -> torch.Tensor:
        return torch.cat([clf(m[c]) for c, clf in enumerate(self.classifiers)])  # [C]
