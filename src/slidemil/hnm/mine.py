"""Mining a round (step 1 of slidemil.hnm): DSMIL + MIRank on a fold's training slides, every
training tile scored, the pseudo labels those scores give (hard negatives, pseudo-positives), and
the gate that keeps them only when the validation metric did not drop.
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
