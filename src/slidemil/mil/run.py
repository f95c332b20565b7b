"""One MIL run of the workflow (rule mil): a model trained on one fold, its outputs written."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from slidemil.config import MilConfig
from slidemil.mil.data import fold_bags
from slidemil.mil.loop import train_mil

log = logging.getLogger(__name__)


def run_fold(features_dir: str | Path, fold_table_csv: str | Path, samples_tsv: str | Path, fold: int,
             model: str, params: dict, out_dir: str | Path, seed: int, classes: list[str], *,
             device: str = "cpu", threads: int | None = None, graphs_dir: str | Path | None = None,
             cache_mb: float = MilConfig.cache_mb) -> None:
    """Train `model` on fold `fold` and write its outputs to `out_dir`.

    The fold's bags, labels and roles come from slidemil.mil.data.fold_bags (at most `cache_mb` of
    features kept in memory). Writes, each via a temp name: model.pt (state_dict + config),
    predictions.csv (slide_id, label, role, prob_<class>..., pred), attention.npz (test slide_id ->
    instance scores [N]), history.csv (epoch, train_loss, val_loss, val_auc).
    """
    if threads:
        torch.set_num_threads(int(threads))
    out_dir = Path(out_dir)
    fb = fold_bags(features_dir, fold_table_csv, samples_tsv, fold, classes, graphs_dir=graphs_dir, cache_mb=cache_mb)
    labels, roles = fb.labels, fb.roles
    result = train_mil(fb.bags, labels, roles, model, len(classes), params, seed, device)
    skipped = fb.skipped + result.skipped
    config = {**result.config, "classes": list(classes), "fold": int(fold), "skipped": skipped,
              "params": dict(params)}

    out_dir.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    rows = []
    for sid in sorted(result.probs):
        p = result.probs[sid]
        rows.append({"slide_id": sid, "label": classes[labels[sid]], "role": roles[sid],
                     **{f"prob_{c}": float(p[i]) for i, c in enumerate(classes)},
                     "pred": classes[int(np.argmax(p))]})
    outputs = {
        "predictions.csv": lambda t: pd.DataFrame(rows).to_csv(t, index=False),
        "history.csv": lambda t: pd.DataFrame(
            result.history, columns=["epoch", "train_loss", "val_loss", "val_auc"]).to_csv(t, index=False),
        "model.pt": lambda t: torch.save({"state_dict": result.model.state_dict(), "config": config}, t),
    }
    test_scores = {s: result.instance_scores[s] for s in sorted(result.probs) if roles[s] == "test"}

    def write_npz(t: Path) -> None:
        with open(t, "wb") as fh:  # a file handle stops numpy appending '.npz' to the temp name
            np.savez(fh, **test_scores)

    outputs["attention.npz"] = write_npz
    temps = []
    for name, write in outputs.items():
        tmp = out_dir / f".{name}.tmp-{pid}"
        write(tmp)
        temps.append((tmp, out_dir / name))
    for tmp, final in temps:
        os.replace(tmp, final)
    log.info("fold %d %s: wrote %s (%d slides, %d skipped)", fold, model, out_dir, len(rows), len(skipped))
