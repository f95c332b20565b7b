"""Config block `evaluate`: folds, the benchmark's statistics and claims, and the heatmaps' FROC."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FrocParams:
    """How lesions are built from annotations and detections from tile scores."""

    merge_um: float = 75.0  # lesions closer than this merge (each grows by half of it)
    itc_um: float | None = 200.0  # lesions with a shorter major axis are ITC, left out; None keeps all
    mask_um: float = 8.0  # pixel size of the evaluation mask, microns
    nms_radius: int = 1  # keep tiles that are the maximum within this many tiles; 0 keeps every tile


@dataclass(frozen=True)
class EvaluateConfig:
    """Config `evaluate`."""

    n_folds: int = 4  # patient-level stratified folds (ignored with an official split)
    val_fraction: float = 0.2  # of each fold's training patients held out for model selection
    use_official_split: bool = False  # the sheet's `split` column instead of folds
    bootstrap: int = 1000  # bootstrap resamples for the 95% CIs
    baseline_encoder: str | None = None  # comparisons: every encoder vs this one; None: the first encoder
    baseline_model: str = "abmil"  # comparisons: every MIL model vs this one; also the claims' model
    compare: list = field(default_factory=list)  # extra pairs {a: encoder/model, b: encoder/model}, a - b
    claim_margin: float = 0.02  # a claim does not hold when the gain's CI upper bound is below this
    png_per_fold: int = 2  # heatmap PNGs per MIL run (every test slide gets GeoJSON)
    froc: FrocParams = field(default_factory=FrocParams)  # lesion FROC of the heatmaps

    @property
    def folds(self) -> int:
        """Folds the benchmark runs: one with the official split."""
        return 1 if self.use_official_split else self.n_folds
