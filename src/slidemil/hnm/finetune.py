"""Fine-tuning a round's encoder (step 2 of slidemil.hnm) with HNM-WSI's SupCon steps on the mined
tiles: hard negatives, and pseudo-positives of which a self-paced top quantile drives step B.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from slidemil.config import HNMParams, PretrainParams
from slidemil.hnm.mine import PseudoLabels, hard_negatives, pseudo_positives

log = logging.getLogger(__name__)


def spl_ratio(p: HNMParams, epoch: int) -> float:
    """Self-paced quantile of pseudo-positives kept in step B at `epoch` (linear after warm-up)."""
    span = max(1, p.epochs - 1 - p.warmup_epochs)
    return float(np.clip(p.spl_start + (p.spl_end - p.spl_start) * (epoch - p.warmup_epochs) / span,
                         min(p.spl_start, p.spl_end), max(p.spl_start, p.spl_end)))


def mined_pools(pl: PseudoLabels, p: HNMParams, order: list[str]) -> dict[str, np.ndarray]:
    """int64 [M, 2] (slide index in `order`, tile) rows of each pool: hard negatives, positives above
    the threshold (`pos_full`), and the scores of the latter (for the self-paced cut)."""
    neg = hard_negatives(pl.scores, pl.labels, p.neg_ratio)
    pos = pseudo_positives(pl.scores, pl.labels, p.pos_threshold)

    def rows(masks):
        return np.array([(i, j) for i, s in enumerate(order) for j in np.flatnonzero(masks[s])], np.int64).reshape(-1, 2)

    pos_rows = rows(pos)
    return {"neg": rows(neg), "pos": pos_rows,
            "pos_scores": np.array([pl.scores[order[i]][j] for i, j in pos_rows], np.float64)}


def _draw(rng: np.random.Generator, pool: np.ndarray, k: int) -> np.ndarray:
    return pool[rng.integers(0, len(pool), k)] if k and len(pool) else np.zeros((0, 2), np.int64)


class MinedPairs:
    """The fine-tuning tiles of a round as a pretraining dataset (slidemil.ssl.pretrain `dataset=`).

    Item k of an epoch -> (tile uint8 [T,T,3], the same tile, label code, False): two augmented
    views of one mined tile; the label code (slidemil.ssl.losses.hnm_steps.encode_labels) carries
    the instance pseudo label, the bag label and the step. Each step of 2 x batch_size rows: a
    step-A batch (pos_batch_fraction positives above the threshold + hard negatives), then a
    step-B batch (pos_query_fraction self-paced positives + hard negatives), or a second step-A
    batch during warm-up. Drawn with replacement, seeded per (seed, epoch).
    """

    def __init__(self, sources, pl: PseudoLabels, p: HNMParams, seed: int, extra: str = "") -> None:
        from slidemil.slides.tile_reader import TileReader

        self.order = [s.slide_id for s in sources]
        missing = sorted(set(pl.scores) - set(self.order))
        if missing:
            raise ValueError(f"pseudo labels name slides without a tile store: {missing[:5]}")
        for s in sources:
            n = len(TileReader(s.tiles))
            if n != len(pl.scores[s.slide_id]):
                raise ValueError(f"{s.tiles}: {n} tiles but {len(pl.scores[s.slide_id])} scores; the tile store "
                                 "changed after mining: rerun the round")
        self.readers = [TileReader(s.tiles) for s in sources]
        self.pl, self.p, self.seed, self.extra = pl, p, seed, extra
        self.pools = mined_pools(pl, p, self.order)
        if not len(self.pools["neg"]):
            raise ValueError("no hard negatives: the fold's training slides hold no negative slide with tiles")
        if not len(self.pools["pos"]):
            log.warning("no positive-slide tile scores above %.2f: fine-tuning on hard negatives only", p.pos_threshold)
        self.plan = np.zeros((0, 3), np.int64)
        self.epoch = -1

    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.pl.digest(), self.p.round_params(), self.seed, self.extra],
                                         sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _batch(self, rng: np.random.Generator, pos: np.ndarray, pos_share: float, step: int) -> np.ndarray:
        from slidemil.ssl.losses.hnm_steps import encode_labels

        b = self.p.batch_size
        k = min(b - 1, max(1, round(b * pos_share))) if len(pos) else 0
        rows_p, rows_n = _draw(rng, pos, k), _draw(rng, self.pools["neg"], b - k)
        codes = [encode_labels(1, 1, step)] * len(rows_p) + [encode_labels(0, 0, step)] * len(rows_n)
        return np.concatenate([np.concatenate([rows_p, rows_n]), np.array(codes, np.int64)[:, None]], 1)

    def set_epoch(self, epoch: int) -> None:
        from slidemil.ssl.losses.hnm_steps import STEP_A, STEP_B

        p, rng = self.p, np.random.default_rng([self.seed, epoch, 0x4E4D])
        pos = self.pools["pos"]
        spl = pos
        if epoch >= p.warmup_epochs and len(pos):
            cut = np.quantile(self.pools["pos_scores"], 1 - spl_ratio(p, epoch))
            spl = pos[self.pools["pos_scores"] >= cut]
        rows = []
        for _ in range(max(1, p.tiles_per_epoch // p.batch_size)):
            rows.append(self._batch(rng, pos, p.pos_batch_fraction, STEP_A))
            rows.append(self._batch(rng, spl, p.pos_query_fraction, STEP_B) if epoch >= p.warmup_epochs
                        else self._batch(rng, pos, p.pos_batch_fraction, STEP_A))
        self.plan, self.epoch = np.concatenate(rows), epoch

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int):
        import torch

        slide, tile, code = (int(v) for v in self.plan[k])
        a = torch.from_numpy(np.ascontiguousarray(self.readers[slide].read(tile)))
        return a, a, torch.tensor(code), torch.tensor(False)


def finetune_params(p: HNMParams, base: dict, init_weights: str | None) -> PretrainParams:
    """The pretraining entry of a round: the base encoder's backbone, HNM-WSI's SupCon steps."""
    return PretrainParams(objective="supcon_hnm_steps", sampler="augment", backbone=base["arch"],
                          depth=base.get("depth"), weights=init_weights, input_size=base.get("input_size"),
                          epochs=p.epochs, batch_size=2 * p.batch_size, tiles_per_epoch=2 * p.tiles_per_epoch,
                          lr=p.lr, optimizer="sgd", weight_decay=p.weight_decay, augment=p.augment,
                          objective_args={"temperature": p.temperature, "base_temperature": p.temperature,
                                          "mask_uncertain_neg": p.mask_uncertain_neg},
                          workers=p.workers, precision=p.precision, balance_labels=False, scope="folds")


def _file_digest(path: str | None) -> str:
    if not path:
        return ""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def finetune_round(tiles: list[str], pseudo_labels: str | Path, params: HNMParams, base: dict,
                   init_weights: str | None, out: str | Path, seed: int, device: str = "auto",
                   on_epoch_end: Callable[[int], None] | None = None) -> dict:
    """Step 3: fine-tune the round-(t-1) encoder (`init_weights`; None = the base's seeded random init)
    on the mined tiles of the training slides listed in `pseudo_labels`; writes `out` (encoder.pt)."""
    from slidemil.ssl.pretrain import pretrain
    from slidemil.ssl.data import SlideSource

    pl = PseudoLabels.load(pseudo_labels)
    by_id = {Path(t).stem: t for t in tiles}
    missing = sorted(set(pl.scores) - set(by_id))
    if missing:
        raise ValueError(f"{pseudo_labels}: no tile store given for training slides {missing[:5]}")
    sources = [SlideSource(s, by_id[s], None, pl.labels[s]) for s in sorted(pl.scores) if len(pl.scores[s])]
    ds = MinedPairs(sources, PseudoLabels({s.slide_id: pl.scores[s.slide_id] for s in sources}, pl.labels, pl.round),
                    params, seed, extra=_file_digest(init_weights))
    log.info("hnm fine-tune %s: %d training slides, %d hard negatives, %d positives above %.2f (labels of round %d)",
             out, len(sources), len(ds.pools["neg"]), len(ds.pools["pos"]), params.pos_threshold, pl.round)
    return pretrain(sources, finetune_params(params, base, init_weights), out, seed, device=device,
                    on_epoch_end=on_epoch_end, dataset=ds)
