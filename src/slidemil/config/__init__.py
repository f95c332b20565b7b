"""Typed config: one frozen dataclass per block of config/config.yaml, the only place a default lives.

Torch-free: the Snakefile loads it while planning. workflow/schemas/config.schema.yaml checks types
and ranges; `with_defaults` fills in the rest; tests/test_config.py keeps config.yaml, the schema and
these dataclasses in step.
"""

from slidemil.config.encoders import EmbedConfig, EncoderSpec
from slidemil.config.evaluate import EvaluateConfig, FrocParams
from slidemil.config.hnm import HNMMil, HNMParams
from slidemil.config.load import entries, from_block
from slidemil.config.mil import MilConfig, MilTrain
from slidemil.config.pretrain import PretrainParams
from slidemil.config.slides import DemoConfig, ExportConfig, GraphConfig, MaskConfig, TileConfig, TileParams, TissueParams
from slidemil.config.top import Config, load_config, with_defaults

__all__ = ["Config", "DemoConfig", "EmbedConfig", "EncoderSpec", "EvaluateConfig", "ExportConfig", "FrocParams",
           "GraphConfig", "HNMMil", "HNMParams", "MaskConfig", "MilConfig", "MilTrain", "PretrainParams", "TileConfig",
           "TileParams", "TissueParams", "entries", "from_block", "load_config", "with_defaults"]
