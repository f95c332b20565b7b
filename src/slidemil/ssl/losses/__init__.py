"""Pretraining objectives, one class per file, registered by name (config `pretrain.<name>.objective`).

Conventions shared by every objective (so that each can be checked number-for-number against the
authors' code on the same tensors):

- Every loss is a pure function of its inputs (no hidden state; DINO's running centre is an
  explicit argument of `dino_loss`, held by the `DINO` module only as a convenience buffer).
- Two views: `z1`, `z2` are float [B, D]; row i of `z1` and row i of `z2` are the two views of
  pair i (two augmentations of one tile, or a tile and its spatial neighbour). This is the
  authors' `features = torch.stack([z1, z2], dim=1)` ([B, n_views=2, D]); contrastive losses
  work on the view-major concatenation `torch.cat([z1, z2])` ([2B, D]) exactly as
  `torch.cat(torch.unbind(features, dim=1))` in SupContrast-derived code.
- `labels` (when used): int [B], one per pair (slide label for WeakSupCon, class or pseudo label
  for SupCon); 0 = negative class.
- Objectives with `normalize = True` expect L2-normalised inputs; the trainer normalises the
  projections (as the authors' projection heads do); the losses themselves never do.
"""

from __future__ import annotations

from slidemil.registry import Registry
from slidemil.ssl.losses.base import Objective

OBJECTIVES: Registry[type[Objective]] = Registry("objective")
register_objective = OBJECTIVES.register  # class decorator: @register_objective("name")
build_objective = OBJECTIVES.build  # build_objective(name, offered={...}, **objective_args)


# importing the modules registers their classes
from slidemil.ssl.losses import (  # noqa: E402,F401
    barlow,
    byol,
    dino,
    hnm_steps,
    hnm_supcon,
    simclr,
    supcon,
    vicreg,
    weaksupcon,
)

__all__ = ["OBJECTIVES", "Objective", "build_objective", "register_objective"]
