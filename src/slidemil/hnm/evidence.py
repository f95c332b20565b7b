"""Mining evidence (the demo's mimic annotations): per fold and round, do the mined hard negatives
find the mimics, and do the pseudo-positives lie in tumour?
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slidemil.config import HNMParams
from slidemil.hnm.mine import PseudoLabels, hard_negatives, pseudo_positives


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
