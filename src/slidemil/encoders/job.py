"""The embed job: one encoder over a batch of tile stores (rules embed_b*, embed_fold)."""

from __future__ import annotations

import dataclasses

from slidemil.config import EncoderSpec


def embed_job(spec: EncoderSpec, weights: str | None, tiles: list[str], outs: list[str], seed: int, device: str,
              threads: int) -> None:
    """Embed `tiles` into `outs` with config `encoders` entry `spec`; `weights` (the rule's declared
    weights input, whose replacement reruns embedding) overrides the entry's."""
    from slidemil.encoders.embed import embed_slides

    if weights:
        spec = dataclasses.replace(spec, weights=weights)
    embed_slides(tiles, outs, spec, seed, device=device, threads=threads)
