"""Config block `mil`: training keys shared by every MIL run, and the runs (`models`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MilTrain:
    """Training keys of a MIL run (slidemil.mil.loop); a run's block under `mil.models` may override them."""

    epochs: int = 40  # passes over the training bags
    lr: float = 5e-4  # AdamW learning rate
    weight_decay: float = 1e-4  # AdamW weight decay
    mirank: bool = False  # (positive, negative) bag pairs + MIRank (models with instance logits; binary)
    mirank_k: int = 10  # MIRank: top-K instance logits per bag
    mirank_weight: float = 0.1  # MIRank weight added to the mean of the pair's own losses


@dataclass(frozen=True)
class MilConfig(MilTrain):
    """Config `mil`: the runs (name: block of constructor parameters, training keys, `model`, `encoders`;
    slidemil.mil.params), the training keys' defaults, and how the jobs run."""

    models: dict = field(default_factory=dict)  # run name -> its block (or a list of registered names)
    device: str = "auto"  # auto (GPU when present), cuda or cpu
    cache_mb: float = 2048.0  # features kept in memory across epochs; the rest is re-read from the stores
