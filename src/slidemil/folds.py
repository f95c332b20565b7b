"""Patient-level train/val/test assignment for the MIL benchmark.

Slides of one patient are correlated (same stain, same tumour), so every split is made over
patients, never slides: a patient is in exactly one role within a fold. Folds are stratified by
the patient's label so each test part keeps the cohort's class balance (scikit-learn's
StratifiedGroupKFold). A cohort's official split (e.g. Camelyon16: 270 train / 129 test) can be
given in the sample sheet's `split` column and then replaces the k-fold scheme.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

log = logging.getLogger(__name__)

ROLES = ("train", "val", "test")
FOLD_COLUMNS = ["slide_id", "fold", "role"]


def _patient_labels(samples: pd.DataFrame) -> pd.Series:
    """One label per patient: the most frequent among its slides (ties: alphabetically first).

    Patients usually have one label; when they do not (e.g. tumour and normal slides of one
    TCGA case), stratifying on the majority label is the best a grouped split can do.
    """
    counts = samples.groupby(["patient_id", "label"]).size().reset_index(name="n")
    counts = counts.sort_values(["patient_id", "n", "label"], ascending=[True, False, True])
    return counts.drop_duplicates("patient_id").set_index("patient_id")["label"]


def _carve_val(patients: pd.Series, val_fraction: float, rng: np.random.Generator) -> set[str]:
    """Pick a class-stratified `val_fraction` of `patients` (index: patient_id, values: label).

    Each class gives round(fraction * n) patients, at least one when the class has two or more
    (so training keeps at least one patient of every class).
    """
    if val_fraction <= 0:
        return set()
    val: set[str] = set()
    for label in sorted(patients.unique()):
        members = np.array(sorted(patients.index[patients == label]))
        if len(members) < 2:
            log.warning("class %r has %d training patient(s): none can go to validation", label,
                        len(members))
            continue
        k = min(len(members) - 1, max(1, int(round(val_fraction * len(members)))))
        val.update(rng.permutation(members)[:k].tolist())
    return val


def _split_filled(samples: pd.DataFrame) -> bool:
    """True when the optional `split` column exists and is filled for every row."""
    if "split" not in samples.columns:
        return False
    split = samples["split"].astype("string").str.strip()
    filled = split.notna() & (split != "")
    if filled.all():
        return True
    if filled.any():
        raise ValueError(
            f"samples: the `split` column is filled for {int(filled.sum())} of {len(samples)} rows; "
            "fill it for every row (train/val/test) to use an official split, or empty it for k-fold")
    return False


def _official_split(samples: pd.DataFrame, val_fraction: float, seed: int) -> pd.DataFrame:
    """Single fold 0 from the sample sheet's `split` column; val carved from train if absent."""
    roles = samples["split"].astype(str).str.strip().str.lower()
    bad = sorted(set(roles) - set(ROLES))
    if bad:
        raise ValueError(f"samples: `split` values must be train/val/test, got {bad}")
    per_patient = roles.groupby(samples["patient_id"]).nunique()
    mixed = per_patient.index[per_patient > 1].tolist()
    if mixed:
        raise ValueError(f"samples: patients in more than one split (leakage): {mixed[:10]}")
    table = pd.DataFrame({"slide_id": samples["slide_id"], "fold": 0, "role": roles.values})
    if not (roles == "val").any():
        train = samples[roles.values == "train"]
        val = _carve_val(_patient_labels(train), val_fraction, np.random.default_rng(seed))
        table.loc[samples["patient_id"].isin(val).values, "role"] = "val"
    return table


def fold_table(samples: pd.DataFrame, n_folds: int, seed: int, val_fraction: float) -> pd.DataFrame:
    """Assign every slide a role (train/val/test) in each fold, grouping by patient.

    samples: columns slide_id, patient_id, label (class name), optional split (train/val/test).
    Returns long format [slide_id, fold, role], n_folds * n_slides rows (or one fold 0 when an
    official split is given), sorted by fold then slide_id. Deterministic for a given seed.
    """
    missing = {"slide_id", "patient_id", "label"} - set(samples.columns)
    if missing:
        raise ValueError(f"samples: missing columns {sorted(missing)}")
    if samples["slide_id"].duplicated().any():
        dup = samples["slide_id"][samples["slide_id"].duplicated()].tolist()
        raise ValueError(f"samples: duplicate slide_id {dup[:10]}")
    # Sorted input makes the result independent of the sample sheet's row order.
    samples = samples.assign(slide_id=samples["slide_id"].astype(str),
                             patient_id=samples["patient_id"].astype(str),
                             label=samples["label"].astype(str))
    samples = samples.sort_values(["patient_id", "slide_id"]).reset_index(drop=True)

    if _split_filled(samples):
        log.info("using the official split from the sample sheet (one fold)")
        table = _official_split(samples, val_fraction, seed)
        return table.sort_values(["fold", "slide_id"]).reset_index(drop=True)[FOLD_COLUMNS]

    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2 for k-fold cross-validation, got {n_folds}")
    patients = _patient_labels(samples)
    per_class = patients.value_counts()
    for label, n in sorted(per_class.items()):
        if n < n_folds:
            raise ValueError(
                f"class {label!r} has {n} patient(s), fewer than n_folds={n_folds}: every test "
                f"part needs one; lower evaluate.n_folds to <= {int(per_class.min())} in the config "
                "(or give an official split in the sample sheet's `split` column)")

    # Split patients (one row each) so slide counts per patient cannot skew the folds.
    pids = patients.index.to_numpy()
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    parts = []
    for fold, (rest_idx, test_idx) in enumerate(splitter.split(pids, patients.to_numpy(), groups=pids)):
        test = set(pids[test_idx])
        rng = np.random.default_rng([seed, fold])
        val = _carve_val(patients.iloc[rest_idx], val_fraction, rng)
        role = np.where(samples["patient_id"].isin(test), "test",
                        np.where(samples["patient_id"].isin(val), "val", "train"))
        parts.append(pd.DataFrame({"slide_id": samples["slide_id"], "fold": fold, "role": role}))
    table = pd.concat(parts, ignore_index=True)
    return table.sort_values(["fold", "slide_id"]).reset_index(drop=True)[FOLD_COLUMNS]
