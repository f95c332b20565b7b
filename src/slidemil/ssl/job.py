"""The pretrain job: one encoder in one scope, from the workflow's paths (rule pretrain)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def pretrain_job(params: dict, scope: str, tiles_dir: str | Path, samples: str | Path, classes: list[str],
                 out: str | Path, seed: int, device: str, threads: int, graphs_dir: str | Path | None = None,
                 folds: str | Path | None = None) -> dict:
    """Pretrain config `pretrain` entry `params` on the slides of `scope` and write `out` (encoder.pt).

    The sheet names the slides ({tiles_dir}/{slide}.zarr, {graphs_dir}/{slide}.npz); labels (class
    index, 0 = negative) are read only for objectives that use them, and only fold scopes get them.
    Under torchrun (WORLD_SIZE > 1) each process joins the group: one process per GPU.
    """
    import torch

    from slidemil.cohorts.sheet import label_indices, slide_paths
    from slidemil.ssl.losses import OBJECTIVES
    from slidemil.ssl.pretrain import PretrainParams, pretrain, sources_for_scope

    torch.set_num_threads(threads)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # negatives are gathered across the processes
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() and device != "cpu" else "gloo")
    p = PretrainParams.from_dict(params)
    labels = label_indices(samples, classes) if OBJECTIVES[p.objective].uses_labels else None
    graphs = slide_paths(graphs_dir, samples, ".npz") if graphs_dir else []
    sources = sources_for_scope(slide_paths(tiles_dir, samples, ".zarr"), graphs, scope, labels, folds)
    log.info("pretrain %s scope %s: %d slides, objective %s, sampler %s", out, scope, len(sources), p.objective,
             p.sampler)
    return pretrain(sources, p, out, seed, device=device)
