"""The whole config: one typed block per key of config/config.yaml, loaded strictly."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from slidemil.config.encoders import EmbedConfig, EncoderSpec
from slidemil.config.evaluate import EvaluateConfig
from slidemil.config.hnm import HNMParams
from slidemil.config.load import entries, from_block
from slidemil.config.mil import MilConfig
from slidemil.config.pretrain import PretrainParams
from slidemil.config.slides import DemoConfig, ExportConfig, GraphConfig, MaskConfig, TileConfig


@dataclass(frozen=True)
class Config:
    """The validated config (workflow/schemas/config.schema.yaml checks types and ranges first)."""

    samples: str  # sample sheet TSV
    classes: list  # label values; the first is the negative class
    encoders: list[EncoderSpec]  # frozen encoders
    seed: int = 0  # seed of the folds, the demo slides and random encoder init
    seeds: list = field(default_factory=lambda: [0, 1, 2])  # MIL training seeds
    on_slide_error: str = "skip"  # skip: unreadable slides are flagged failed and left out; fail: stop
    demo: DemoConfig = field(default_factory=DemoConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    tile: TileConfig = field(default_factory=TileConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    pretrain: dict[str, PretrainParams] = field(default_factory=dict)  # name -> pretrained encoder
    hnm: dict[str, HNMParams] = field(default_factory=dict)  # name -> mining run
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    mil: MilConfig = field(default_factory=MilConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


ENTRY_BLOCKS = ("encoders", "pretrain", "hnm")  # blocks of named entries, loaded entry by entry


def load_config(config: dict[str, Any]) -> Config:
    """The typed config; an unknown key anywhere is a ValueError naming its block and the known keys."""
    flat = {k: v for k, v in config.items() if k not in ENTRY_BLOCKS}
    flat["encoders"] = []  # a placeholder for the strict check of the other blocks
    cfg = from_block(Config, flat, "")
    encoders = [from_block(EncoderSpec, e, f"encoders[{i}]") for i, e in enumerate(config.get("encoders") or [])]
    hnm = {str(n): HNMParams.from_dict(e or {}, f"hnm.{n}") for n, e in (config.get("hnm") or {}).items()}
    return dataclasses.replace(cfg, encoders=encoders, pretrain=entries(PretrainParams, config.get("pretrain"), "pretrain"),
                               hnm=hnm)


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """The config as plain data with every default filled in from the dataclasses (the rules' view)."""
    return dataclasses.asdict(load_config(config))
