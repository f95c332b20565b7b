"""Hard-negative mining (HNM-WSI, seed paper 002) as rounds of the workflow.

Per run (config `hnm`, name: params), fold k and round t = 1..rounds:

1. `mine_round`: DSMIL + MIRank trained on the round-(t-1) features of fold k's training slides,
   the epoch selected on its validation slides (slidemil.mil.loop); every tile of the training
   slides scored (sigmoid of the instance logit); the gate: the round's scores become the pseudo
   labels only if the validation metric did not drop below the best of the earlier rounds (else
   the last accepted ones stay). Writes pseudo_labels.npz and gate.json.
2. `finetune_round`: the round-(t-1) encoder fine-tuned with HNM-WSI's SupCon steps
   (objective `supcon_hnm_steps`) on the mined tiles through slidemil.ssl.pretrain (checkpoint per
   epoch, resume): hard negatives = the top `neg_ratio` quantile of negative slides' tiles;
   pseudo-positives = positive slides' tiles above `pos_threshold`, of which a self-paced top
   quantile (spl_start -> spl_end after the warm-up) drives step B.
3. The workflow re-embeds every slide of the fold (rule embed_fold) with the round-t encoder
   `{run}-r{t}`, an encoder of the benchmark like any other.

Only training slides' labels drive mining; validation slides' labels select the MIL epoch and
gate; test slides are never read here (their features are made by embed_fold and scored by the
benchmark's own MIL rules).

Departures from the authors' code (winston52/HNM-WSI): a round is a fixed number of fine-tune
epochs (`epochs`; theirs re-mines every MIL_every_n_epochs epochs of one long run) with the
self-paced ratio running over the round's epochs; the projection head starts afresh each round;
the MIL epoch is selected on validation loss and the gate reads validation F1 (or AUC) at that
epoch, where theirs selects on test AUC; the two SupCon steps are one optimiser step on their
sum (slidemil.ssl.losses.hnm_steps).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from slidemil.config import HNMParams

log = logging.getLogger(__name__)


def spl_ratio(p: HNMParams, epoch: int) -> float:
    """Self-paced quantile of pseudo-positives kept in step B at `epoch` (linear after warm-up)."""
    span = max(1, p.epochs - 1 - p.warmup_epochs)
    return float(np.clip(p.spl_start + (p.spl_end - p.spl_start) * (epoch - p.warmup_epochs) / span,
                         min(p.spl_start, p.spl_end), max(p.spl_start, p.spl_end)))


def hard_negatives(scores: dict[str, np.ndarray], labels: dict[str, int], neg_ratio: float) -> dict[str, np.ndarray]:
    """slide -> bool [N]: negative slides' tiles whose score is in the top `neg_ratio` quantile of all
    negative-slide tiles (score >= the (1 - neg_ratio) quantile, as the authors' negfilter); False on
    positive slides."""
    neg = [scores[s] for s in scores if labels[s] == 0]
    if not neg or not sum(len(x) for x in neg):
        return {s: np.zeros(len(x), bool) for s, x in scores.items()}
    cut = np.quantile(np.concatenate(neg), 1 - neg_ratio)
    return {s: (x >= cut) if labels[s] == 0 else np.zeros(len(x), bool) for s, x in scores.items()}


def pseudo_positives(scores: dict[str, np.ndarray], labels: dict[str, int], threshold: float,
                     ratio: float = 1.0) -> dict[str, np.ndarray]:
    """slide -> bool [N]: positive slides' tiles scoring above `threshold`, then only those at or above
    the (1 - ratio) quantile of these candidates (ratio 1: all of them; the self-paced top quantile)."""
    cand = {s: (x > threshold) if labels[s] == 1 else np.zeros(len(x), bool) for s, x in scores.items()}
    pool = np.concatenate([scores[s][m] for s, m in cand.items()] or [np.zeros(0)])
    if ratio >= 1 or not len(pool):
        return cand
    cut = np.quantile(pool, 1 - ratio)
    return {s: m & (scores[s] >= cut) for s, m in cand.items()}


@dataclass
class PseudoLabels:
    """Tile scores of a fold's training slides (sigmoid of DSMIL's instance logits) and slide labels."""

    scores: dict[str, np.ndarray]  # slide -> float32 [N]
    labels: dict[str, int]  # slide -> 0/1 (training slides only)
    round: int  # the round whose MIL produced these scores (earlier than the file's round when gated out)

    def save(self, path: str | Path) -> None:
        from slidemil.files import atomic_path

        ids = sorted(self.scores)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, slide_ids=np.array(ids), labels=np.array([self.labels[s] for s in ids], np.int64),
                     offsets=np.cumsum([0] + [len(self.scores[s]) for s in ids]).astype(np.int64),
                     scores=np.concatenate([self.scores[s] for s in ids] or [np.zeros(0)]).astype(np.float32),
                     round=np.int64(self.round))

    @classmethod
    def load(cls, path: str | Path) -> "PseudoLabels":
        with np.load(path) as z:
            ids, off = [str(s) for s in z["slide_ids"]], z["offsets"]
            return cls({s: z["scores"][off[i]: off[i + 1]] for i, s in enumerate(ids)},
                       {s: int(v) for s, v in zip(ids, z["labels"])}, int(z["round"]))

    def digest(self) -> str:
        h = hashlib.sha256()
        for s in sorted(self.scores):
            h.update(s.encode() + bytes([self.labels[s]]) + np.ascontiguousarray(self.scores[s], np.float32).tobytes())
        return h.hexdigest()[:16]


# --- the gate -----------------------------------------------------------------------------------


def _f1(y: np.ndarray, p: np.ndarray) -> float:
    pred = p >= 0.5
    tp = float((pred & (y == 1)).sum())
    denom = pred.sum() + (y == 1).sum()
    return 2 * tp / denom if denom else 0.0


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from slidemil.evaluate.metrics import auc_binary

    a = auc_binary(y == 1, p)
    return 0.0 if not np.isfinite(a) else a


GATE_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"f1": _f1, "auc": _auc}


def gate(metric: float, previous: dict | None) -> dict:
    """The authors' update signal: accept this round's pseudo labels when the validation metric is
    >= the best of the earlier rounds (round 1 always). previous: the last round's gate.json."""
    best_before = previous["best"] if previous else float("-inf")
    accepted = bool(metric >= best_before)
    return {"val_metric": float(metric), "best_before": None if previous is None else float(best_before),
            "accepted": accepted, "best": float(max(metric, best_before))}


def mine_round(features_dir: str | Path, folds_csv: str | Path, samples_tsv: str | Path, fold: int,
               params: HNMParams, classes: list[str], out_dir: str | Path, seed: int, round_: int,
               previous_dir: str | Path | None = None, device: str = "cpu") -> dict:
    """Step 1, 2 and 5 of a round on fold `fold`: DSMIL + MIRank, tile scores, gate. Returns gate.json.

    Reads labels of the fold's training and validation slides only (test slides are not opened).
    Writes out_dir/pseudo_labels.npz, out_dir/gate.json and out_dir/mil/{model.pt, history.csv}.
    """
    import pandas as pd
    import torch

    from slidemil.files import atomic_path, write_text
    from slidemil.mil.data import fold_bags
    from slidemil.mil.loop import train_mil

    out_dir = Path(out_dir)
    fb = fold_bags(features_dir, folds_csv, samples_tsv, fold, classes, roles=("train", "val"))
    labels, roles = fb.labels, fb.roles
    result = train_mil(fb.bags, labels, roles, "dsmil", 2, params.mil_params(), seed, device)
    train_ids = [s for s in sorted(roles) if roles[s] == "train"]
    val_ids = [s for s in sorted(roles) if roles[s] == "val"]
    prev_gate = json.loads((Path(previous_dir) / "gate.json").read_text()) if previous_dir else None
    y_val = np.array([labels[s] for s in val_ids])
    p_val = np.array([result.probs[s][1] for s in val_ids])
    decision = gate(GATE_METRICS[params.gate_metric](y_val, p_val) if val_ids else 0.0, prev_gate)
    if decision["accepted"]:
        scores = {s: (1 / (1 + np.exp(-result.instance_scores[s].astype(np.float64)))).astype(np.float32)
                  for s in train_ids}
        pl = PseudoLabels(scores, {s: labels[s] for s in train_ids}, round_)
    else:  # keep the last accepted pseudo labels
        pl = PseudoLabels.load(Path(previous_dir) / "pseudo_labels.npz")
    decision.update({"round": round_, "fold": fold, "metric": params.gate_metric, "labels_from_round": pl.round,
                     "best_epoch": result.best_epoch, "n_train": len(train_ids), "n_val": len(val_ids)})
    pl.save(out_dir / "pseudo_labels.npz")
    mil_dir = out_dir / "mil"
    mil_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(mil_dir / "model.pt") as tmp:
        torch.save({"state_dict": result.model.state_dict(), "config": result.config}, tmp)
    with atomic_path(mil_dir / "history.csv") as tmp:
        pd.DataFrame(result.history, columns=["epoch", "train_loss", "val_loss", "val_auc"]).to_csv(tmp, index=False)
    write_text(json.dumps(decision, indent=1), out_dir / "gate.json")
    log.info("hnm fold %d round %d: val %s %.3f (best before %s): %s", fold, round_, params.gate_metric,
             decision["val_metric"], decision["best_before"], "accepted" if decision["accepted"] else "kept earlier labels")
    return decision


# --- fine-tuning --------------------------------------------------------------------------------


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


def finetune_params(p: HNMParams, base: dict, init_weights: str | None) -> "PretrainParams":  # noqa: F821
    """The pretraining entry of a round: the base encoder's backbone, HNM-WSI's SupCon steps."""
    from slidemil.ssl.pretrain import PretrainParams

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


# --- mining evidence (demo: mimic annotations) -----------------------------------------------------


def mining_evidence(rounds: list[tuple[int, int, str | Path]], tiles: dict[str, str], mimics: dict[str, str],
                    tumours: dict[str, str], params: HNMParams) -> "pd.DataFrame":  # noqa: F821
    """One row per (fold, round): do the mined hard negatives find the mimics?

    rounds: (fold, round, round dir with pseudo_labels.npz and gate.json). For the negative
    training slides with a mimic annotation: the fraction of mined hard negatives whose centre lies in
    a mimic, against the base rate (mimic tiles among all their tiles), and the ratio (enrichment);
    also the fraction of pseudo-positives (above the threshold) inside tumour where annotated.
    Last, one row per round with fold "all": the counts summed over the folds.
    """
    import pandas as pd
    import zarr

    from slidemil.cohorts.annotations import tile_labels

    inside_cache: dict[tuple[str, str], np.ndarray] = {}

    def inside(sid: str, ann: str) -> np.ndarray:
        if (sid, ann) not in inside_cache:
            g = zarr.open_group(tiles[sid], mode="r")
            inside_cache[(sid, ann)] = tile_labels(np.asarray(g["coords"][:]), float(g.attrs["tile_size_level0"]),
                                                   ann).astype(bool)
        return inside_cache[(sid, ann)]

    rows = []
    for fold, t, d in rounds:
        pl = PseudoLabels.load(Path(d) / "pseudo_labels.npz")
        g = json.loads((Path(d) / "gate.json").read_text())
        neg = hard_negatives(pl.scores, pl.labels, params.neg_ratio)
        pos = pseudo_positives(pl.scores, pl.labels, params.pos_threshold)
        neg_ids = [s for s in pl.scores if pl.labels[s] == 0 and s in mimics and Path(mimics[s]).exists()]
        pos_ids = [s for s in pl.scores if pl.labels[s] == 1 and s in tumours and Path(tumours[s]).exists()]
        n_tiles = sum(len(pl.scores[s]) for s in neg_ids)
        n_mimic = sum(int(inside(s, mimics[s]).sum()) for s in neg_ids)
        n_mined = sum(int(neg[s].sum()) for s in neg_ids)
        mined_mimic = sum(int((neg[s] & inside(s, mimics[s])).sum()) for s in neg_ids)
        n_pos = sum(int(pos[s].sum()) for s in pos_ids)
        pos_tumour = sum(int((pos[s] & inside(s, tumours[s])).sum()) for s in pos_ids)
        rows.append({"fold": fold, "round": t, "accepted": g["accepted"], "labels_from_round": pl.round,
                     "val_metric": g["val_metric"], "n_negative_slides": len(neg_ids), "n_negative_tiles": n_tiles,
                     "n_mimic_tiles": n_mimic, "n_mined": n_mined, "n_mined_in_mimic": mined_mimic,
                     "n_pseudo_positive": n_pos, "n_pseudo_positive_in_tumour": pos_tumour})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    counts = ["n_negative_slides", "n_negative_tiles", "n_mimic_tiles", "n_mined", "n_mined_in_mimic",
              "n_pseudo_positive", "n_pseudo_positive_in_tumour"]
    pooled = table.groupby("round", as_index=False)[counts].sum()  # each round over the folds
    pooled["fold"] = "all"
    table = pd.concat([table.astype({"fold": object}), pooled], ignore_index=True)
    table["labels_from_round"] = table["labels_from_round"].astype("Int64")  # blank, not 1.0, on pooled rows
    with np.errstate(divide="ignore", invalid="ignore"):
        table["mined_in_mimic"] = table["n_mined_in_mimic"] / table["n_mined"]
        table["mimic_base_rate"] = table["n_mimic_tiles"] / table["n_negative_tiles"]
        table["enrichment"] = table["mined_in_mimic"] / table["mimic_base_rate"]
        table["pseudo_positive_in_tumour"] = table["n_pseudo_positive_in_tumour"] / table["n_pseudo_positive"]
    return table
