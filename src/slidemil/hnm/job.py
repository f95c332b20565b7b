"""The hard-negative-mining jobs (rules hnm_mine, hnm_finetune, hnm_mining), from the workflow's paths."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def mine_job(params: dict, features_dir: str | Path, folds: str | Path, samples: str | Path, fold: int,
             round_: int, classes: list[str], out_dir: str | Path, seed: int, device: str, threads: int,
             previous_dir: str | Path | None = None) -> dict:
    """Round `round_` of fold `fold`: DSMIL + MIRank on the round-(t-1) features, tile scores, gate."""
    import torch

    from slidemil.config import HNMParams
    from slidemil.hnm.mine import mine_round

    torch.set_num_threads(threads)
    return mine_round(features_dir, folds, samples, fold, HNMParams.from_dict(params), classes, out_dir, seed,
                      round_, previous_dir=previous_dir or None, device=device)


def finetune_job(params: dict, tiles_dir: str | Path, samples: str | Path, pseudo_labels: str | Path, base: dict,
                 init: str | None, out: str | Path, seed: int, device: str, threads: int) -> dict:
    """Fine-tune the round-(t-1) encoder (`init`; None: the base's seeded random init) on the mined tiles."""
    import torch

    from slidemil.cohorts.sheet import slide_paths
    from slidemil.config import HNMParams
    from slidemil.hnm.finetune import finetune_round

    torch.set_num_threads(threads)
    return finetune_round(slide_paths(tiles_dir, samples, ".zarr"), pseudo_labels, HNMParams.from_dict(params),
                          base, init or None, out, seed, device=device)


def parse_round_dir(path: str | Path) -> tuple[int, int, str]:
    """results/hnm/{run}/fold{k}/round{t} -> (k, t, path)."""
    parts = Path(path).parts
    return int(parts[-2].removeprefix("fold")), int(parts[-1].removeprefix("round")), str(path)


def evidence_job(params: dict, round_dirs: list[str], tiles_dir: str | Path, samples: str | Path,
                 annotations: str | Path | None, out: str | Path) -> None:
    """mining.csv: per (fold, round), do the mined hard negatives find the mimic annotations?"""
    from slidemil.cohorts.sheet import read_annotation_table, slide_paths
    from slidemil.files import atomic_path
    from slidemil.config import HNMParams
    from slidemil.hnm.evidence import mining_evidence

    tiles = {Path(t).stem: t for t in slide_paths(tiles_dir, samples, ".zarr")}
    ann = read_annotation_table(annotations)
    table = mining_evidence([parse_round_dir(d) for d in round_dirs], tiles, ann["mimic"], ann["tumour"],
                            HNMParams.from_dict(params))
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    log.info("%s", table.to_string())
