"""Config block `pretrain`: one pretrained encoder per entry."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from slidemil.config.load import from_block


@dataclass(frozen=True)
class PretrainParams:
    """One entry of config `pretrain` (the entry's name becomes an encoder of the benchmark)."""

    objective: str = "simclr"  # slidemil.ssl.losses.OBJECTIVES
    objective_args: dict = field(default_factory=dict)  # e.g. {temperature: 0.2}
    sampler: str = "augment"  # slidemil.ssl.samplers: augment | spatial | mixed
    radius: int = 1  # Chebyshev radius of spatial pairs
    p: float = 0.5  # mixed: probability that a pair is spatial
    backbone: str = "resnet18"  # slidemil.encoders arch
    depth: int | None = None  # backbone override (ResNet stages / ViT blocks)
    weights: str | None = None  # initial weights (local file, e.g. ImageNet); None: seeded random init
    input_size: int | None = None  # crop size fed to the network; None: the backbone's own
    epochs: int = 10
    batch_size: int = 64  # pairs per step (2 x batch_size images per forward pass)
    tiles_per_epoch: int = 4096  # anchor tiles drawn per epoch (a random subset when the cohort has more)
    lr: float = 0.05
    optimizer: str = "sgd"  # sgd (momentum 0.9) | adamw
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0  # linear warm-up, then cosine decay to 0
    head: dict = field(default_factory=dict)  # HeadSpec overrides: hidden, out, layers, bn, predictor_hidden
    augment: dict = field(default_factory=dict)  # AugmentParams overrides
    ema: float = 0.99  # BYOL/DINO teacher momentum, raised to 1 along a cosine
    balance_labels: bool | None = None  # half negative-slide, half positive-slide tiles per batch; None: if labels used
    scope: str = "auto"  # auto (fold{k} if labels are used, else all) | all | folds
    workers: int = 0  # DataLoader workers reading and decoding tiles
    enabled: bool = True  # false drops the entry (a config file cannot delete a dict key it merges over)
    gpus: int = 1  # > 1: torchrun with one process per GPU (DDP, contrastive negatives gathered across ranks)
    precision: str = "bf16"  # autocast dtype on CUDA (fp32 | fp16 | bf16); the CPU runs fp32

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainParams":
        return from_block(cls, d, "pretrain")

    def digest(self) -> str:
        """Hash of what shapes the weights (not `workers`, `gpus`): a checkpoint resumes only if it matches."""
        d = dataclasses.asdict(self)
        d.pop("workers"), d.pop("gpus"), d.pop("enabled")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
