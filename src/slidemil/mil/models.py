"""Multiple-instance learning (MIL) slide classifiers and their registry.

Every model maps one bag x: float [N, D] (N tile features of one slide) to
(logits [C], instance_scores [N]). Binary tasks use C = 2 with cross-entropy, so the same code
runs multiclass cohorts (TCGA-RCC). instance_scores feed attention heatmaps: attention weights
for attention models, per-instance evidence (logits) for instance-level models.

New models register with `@register_mil("name")` and take (in_dim, n_classes, **params).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

import torch
from torch import nn

MIL_MODELS: dict[str, type[nn.Module]] = {}

M = TypeVar("M", bound=type[nn.Module])


def register_mil(name: str) -> Callable[[M], M]:
    """Class decorator: make a MIL model buildable by name (config: mil.models)."""

    def deco(cls: M) -> M:
        if name in MIL_MODELS and MIL_MODELS[name] is not cls:
            raise ValueError(f"MIL model {name!r} is already registered ({MIL_MODELS[name].__name__})")
        MIL_MODELS[name] = cls
        return cls

    return deco


def build_mil(name: str, in_dim: int, n_classes: int, **params: Any) -> nn.Module:
    """Instantiate registered model `name` for D = in_dim features and C = n_classes.

    Unknown params raise TypeError naming the accepted ones (a typo in the config must not be
    silently ignored).
    """
    if name not in MIL_MODELS:
        raise KeyError(f"unknown MIL model {name!r}; registered: {sorted(MIL_MODELS)}")
    cls = MIL_MODELS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "in_dim", "n_classes"}
    unknown = set(params) - accepted
    if unknown:
        raise TypeError(f"MIL model {name!r} got unknown params {sorted(unknown)}; "
                        f"accepted: {sorted(accepted)}")
    return cls(in_dim=in_dim, n_classes=n_classes, **params)


def _check_bag(x: torch.Tensor) -> None:
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"a MIL bag must be a non-empty [N, D] tensor, got shape {tuple(x.shape)}")


def _projection(in_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    """Linear(D, H) + ReLU + Dropout: the per-instance embedding shared by all models here."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))


def instance_evidence(logits: torch.Tensor) -> torch.Tensor:
    """Per-instance logits [N, C] -> score [N]: log-odds of class 1 when C == 2, else max logit."""
    if logits.shape[1] == 2:
        return logits[:, 1] - logits[:, 0]
    return logits.max(dim=1).values


@register_mil("mean")
class MeanMIL(nn.Module):
    """Mean pooling: h_i = MLP(x_i) [N, H]; logits = W mean_i(h_i) [C].

    The head is linear, so logits equal the mean of per-instance logits W h_i, which are
    returned (as class-1 log-odds, or max logit for C > 2) as instance scores.
    """

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 128, dropout: float = 0.25) -> None:
        super().__init__()
        self.project = _projection(in_dim, hidden, dropout)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_bag(x)
        inst = self.head(self.project(x))  # [N, C]
        return inst.mean(dim=0), instance_evidence(inst)


@register_mil("max")
class MaxMIL(nn.Module):
    """Max pooling: per-instance logits MLP(x_i) [N, C]; bag logit of class c = max_i logit_ic.

    Each class takes its evidence from its own strongest instance (the classic MI-Net /
    mi-SVM baseline); instance scores are per-instance class-1 log-odds (max logit for C > 2).
    """

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 128, dropout: float = 0.25) -> None:
        super().__init__()
        self.instance = nn.Sequential(_projection(in_dim, hidden, dropout), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_bag(x)
        inst = self.instance(x)  # [N, C]
        return inst.max(dim=0).values, instance_evidence(inst)


@register_mil("abmil")
class GatedABMIL(nn.Module):
    """Gated attention MIL (Ilse, Tomczak & Welling, ICML 2018, "Attention-based Deep MIL").

    h_i = Dropout(ReLU(W_p x_i))                    [N, H]
    a_i = softmax_i( w^T (tanh(V h_i) * sigm(U h_i)) )  [N]   (gating lets a_i be non-linear in h_i)
    z   = sum_i a_i h_i                              [H]
    logits = W_c z                                   [C];  instance scores = a [N].
    """

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 128, dropout: float = 0.25,
                 attn_dim: int | None = None) -> None:
        super().__init__()
        attn_dim = attn_dim or hidden
        self.project = _projection(in_dim, hidden, dropout)
        self.attn_v = nn.Linear(hidden, attn_dim)
        self.attn_u = nn.Linear(hidden, attn_dim)
        self.attn_w = nn.Linear(attn_dim, 1)
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_bag(x)
        h = self.project(x)  # [N, H]
        gate = torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))  # [N, A]
        a = torch.softmax(self.attn_w(gate).squeeze(1), dim=0)  # [N]
        z = a @ h  # [H]
        return self.classifier(z), a
