"""Config block `hnm`: one hard-negative-mining run per entry (seed paper 002)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from slidemil.config.load import from_block

GATE_METRIC_NAMES = ("f1", "auc")  # slidemil.hnm.mine.GATE_METRICS, the validation metrics the gate may read


@dataclass(frozen=True)
class HNMMil:
    """The DSMIL + MIRank model a mining round trains: the authors' settings (Adam 2e-4, K = 10)."""

    epochs: int = 40  # passes over the training bags
    lr: float = 2e-4  # learning rate
    weight_decay: float = 1e-4  # weight decay
    mirank_k: int = 10  # MIRank: top-K instance logits per bag
    mirank_weight: float = 0.1  # MIRank weight added to the pair's own losses
    dropout: float | None = None  # DSMIL's dropout; None: the model's own


@dataclass(frozen=True)
class HNMParams:
    """One entry of config `hnm` (config/config.yaml documents each key)."""

    base: str  # round 0: an encoder of the benchmark
    rounds: int = 2
    neg_ratio: float = 0.2  # hard negatives: top quantile of negative slides' tile scores
    pos_threshold: float = 0.3  # pseudo-positive: positive slide's tile scoring above this
    spl_start: float = 0.2  # self-paced quantile of pseudo-positives in step B, first epoch after warm-up
    spl_end: float = 0.8  # ... at the last epoch
    warmup_epochs: int = 1  # epochs of step A only
    epochs: int = 2  # fine-tune epochs per round
    lr: float = 0.01
    weight_decay: float = 1e-4
    batch_size: int = 64  # tiles per step (A and B each)
    tiles_per_epoch: int = 1024
    pos_batch_fraction: float = 0.5  # step A: share of positives (authors' posi_batch_ratio)
    pos_query_fraction: float = 0.05  # step B: share of self-paced positives (posi_query_ratio)
    mask_uncertain_neg: bool = True
    temperature: float = 0.07
    gate_metric: str = "f1"  # GATE_METRIC_NAMES
    mil: HNMMil = field(default_factory=HNMMil)  # the DSMIL + MIRank model that scores the tiles
    augment: dict = field(default_factory=dict)  # slidemil.ssl.augment.AugmentParams overrides
    workers: int = 0
    precision: str = "bf16"
    enabled: bool = True

    @classmethod
    def from_dict(cls, d: dict, block: str = "hnm") -> "HNMParams":
        """Strict: unknown keys, an unknown gate metric or ratios outside (0, 1] are a ValueError."""
        p = from_block(cls, d, block)
        if p.gate_metric not in GATE_METRIC_NAMES:
            raise ValueError(f"hnm gate_metric must be one of {sorted(GATE_METRIC_NAMES)}, got {p.gate_metric!r}")
        if not 0 < p.neg_ratio <= 1 or not 0 < p.spl_start <= 1 or not 0 < p.spl_end <= 1:
            raise ValueError("hnm neg_ratio, spl_start and spl_end must be in (0, 1]")
        return p

    def round_params(self) -> dict:
        """What shapes a round's outputs: every key but `rounds` and `enabled`, so that raising
        `rounds` leaves the finished rounds' jobs (and their params) as they are."""
        d = dataclasses.asdict(self)
        d.pop("rounds"), d.pop("enabled")
        return d

    def mil_params(self) -> dict:
        """The mining model's training params (slidemil.mil.loop): MIRank always on."""
        return {**{k: v for k, v in dataclasses.asdict(self.mil).items() if v is not None}, "mirank": True}
