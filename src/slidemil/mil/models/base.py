"""The MIL model contract, the registry and helpers shared by the models in this package.

Every model maps one bag (a `Bag`, or a bare feature tensor x [N, D]) to a `MilOutput`:
logits [C] (C = 2 for binary tasks: cross-entropy, and the same code runs multiclass cohorts) and
instance_scores [N] for heatmaps (attention weights for attention models, per-instance evidence
for instance-level models). A `MilOutput` unpacks as (logits, instance_scores).

Each model owns its training loss: `model.loss(out, target)` (bag cross-entropy unless the model
says otherwise). Models with `instance_logits` (raw per-instance class-1 logits [N]) can also be
trained with MIRank (slidemil.mil.losses). New models register with `@register_mil("name")` and
take (in_dim, n_classes, **params).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from slidemil.mil.bag import Bag
from slidemil.registry import Registry


@dataclass
class MilOutput:
    """What a model returns for one bag.

    logits [C]; instance_scores [N] (heatmaps); instance_logits [N] raw class-1 instance logits
    (None for models without an instance classifier); aux: tensors the model's loss needs.
    """

    logits: torch.Tensor
    instance_scores: torch.Tensor
    instance_logits: torch.Tensor | None = None
    aux: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[torch.Tensor]:  # `logits, scores = model(x)`
        return iter((self.logits, self.instance_scores))

    def __getitem__(self, i: int) -> torch.Tensor:
        return (self.logits, self.instance_scores)[i]


class MILModel(nn.Module):
    """Base class: forward(bag) -> MilOutput; loss(out, target) = bag cross-entropy."""

    has_instance_logits: bool = False  # True: MilOutput.instance_logits is set (MIRank applies)

    def loss(self, out: MilOutput, target: torch.Tensor) -> torch.Tensor:
        """Training loss of one bag; target: long scalar class index. Default: CE(logits, target)."""
        return F.cross_entropy(out.logits[None], target.view(1))


MIL_MODELS: Registry[type[MILModel]] = Registry("MIL model")
register_mil = MIL_MODELS.register  # class decorator: @register_mil("name") (config: mil.models)


def model_params(name: str) -> dict[str, inspect.Parameter]:
    """Constructor parameters of registered model `name`, less in_dim/n_classes."""
    return {k: p for k, p in MIL_MODELS.params(name).items() if k not in ("in_dim", "n_classes")}


def build_mil(name: str, in_dim: int, n_classes: int, **params: Any) -> MILModel:
    """Instantiate registered model `name` for D = in_dim features and C = n_classes.

    Unknown params raise TypeError naming the accepted ones (a typo in the config must not be
    silently ignored).
    """
    return MIL_MODELS.build(name, in_dim=in_dim, n_classes=n_classes, **params)


def bag_features(x: torch.Tensor | Bag) -> torch.Tensor:
    """Features [N, D] of a Bag or a bare tensor, checked non-empty."""
    feats = x.features if isinstance(x, Bag) else x
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"a MIL bag must be a non-empty [N, D] tensor, got shape {tuple(feats.shape)}")
    return feats


def projection(in_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    """Linear(D, H) + ReLU + Dropout: the per-instance embedding of most models here."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))


def instance_evidence(logits: torch.Tensor) -> torch.Tensor:
    """Per-instance logits [N, C] -> score [N]: log-odds of class 1 when C == 2, else max logit."""
    if logits.shape[1] == 2:
        return logits[:, 1] - logits[:, 0]
    return logits.max(dim=1).values
