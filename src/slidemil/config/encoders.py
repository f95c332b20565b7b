"""Config blocks of the encoders: one `encoders` entry, and `embed`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EncoderSpec:
    """One entry of config `encoders`: which network, its weights, and overrides of the entry's defaults.

    The registered entry it names (input size, precision) is slidemil.encoders.get_entry(spec.arch)."""

    name: str
    arch: str = "resnet18"  # slidemil.encoders arch or timm:<model>
    weights: str | None = None  # local checkpoint; None = seeded random init
    input_size: int | None = None  # None: the entry's own input size
    depth: int | None = None  # ResNet stages / ViT blocks kept; None: the full network
    batch_size: int = 128  # tiles per forward pass
    precision: str | None = None  # None: the entry's own (fp32 / fp16 / bf16 autocast on CUDA)
    workers: int = 0  # DataLoader workers decoding tiles while the model runs (0: in process)
    extra: dict = field(default_factory=dict)  # further builder overrides (e.g. timm kwargs)

    def overrides(self) -> dict:
        """Keyword arguments for the entry's builder."""
        return {**({"depth": self.depth} if self.depth is not None else {}), **self.extra}


@dataclass(frozen=True)
class EmbedConfig:
    """Config `embed`: how the embedding jobs run."""

    device: str = "auto"  # auto (GPU when present), cuda or cpu
    threads: int = 1  # CPU threads per embed job
    slides_per_job: int = 16  # slides embedded per job (one model load each)
