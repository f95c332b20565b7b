"""Patient-level train/val/test assignment for the MIL benchmark, stable under edits of the cohort.

Slides of one patient are correlated (same stain, same tumour), so every split is made over
patients, never slides: a patient is in exactly one role within a fold. A cohort's official split
(e.g. Camelyon16: 270 train / 129 test) can be given in the sample sheet's `split` column and then
replaces the k-fold scheme.

Folds are assigned on the whole sample sheet, before QC; slides that fail QC are left out
afterwards (MIL skips failed and empty feature stores), so a slide failing, being fixed or
re-scanned never moves another slide. Stability when the sheet itself changes is a design
choice too. StratifiedGroupKFold's assignment depends on the whole set: dropping one of 120 slides
moved the test fold of 86 others. The alternatives, for one class of n patients and k folds:

* fold = hash(patient) mod k: a patient's fold depends on nothing else, so no edit ever moves
  another patient, but fold sizes are binomial. With 12 positive patients and 4 folds, a test
  fold without positives (undefined AUC) comes up for ~13% of seeds. Exact stability under every
  removal *forces* this scheme (if removing any other patient never moves p, then p's fold
  equals its fold in the cohort {p} alone), so stability and guaranteed balance trade off.
* sort by hash, deal round-robin (rank mod k): balanced to +-1, but a removal shifts the deal of
  every later patient (~(k-1)/k of them move).
* hash-rank bucketing (used here): sort the class's patients by a seeded hash of their id and cut
  the order into k contiguous runs of floor/ceil(n/k) patients (fold = floor(rank * k / n),
  rotated by a per-class offset so the classes' larger runs land in different folds). Balanced to
  +-1 per class, and a removal or addition only moves each of the k-1 cut points by at most one
  place: at most k-1 patients change test fold, all of the removed patient's class, and no
  patient of another class moves. Dropping a slide whose patient keeps other slides moves nothing.

Validation patients are carved the same way inside each fold: per class, the training patients
with the lowest values of a second hash (seeded with the fold) go to validation, round(val_fraction
* n) of them (at least one, leaving at least one in training). An edit of another patient changes
that count or that ordered list by at most a patient or two, not a reshuffle.

The hash is BLAKE2b of (seed, purpose, patient_id): independent of the sheet's row order and of
Python's per-process hash randomisation.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

ROLES = ("train", "val", "test")
FOLD_COLUMNS = ["slide_id", "fold", "role"]


def stable_hash(seed: int, purpose: str, key: str) -> float:
    """A uniform number in [0, 1) from (seed, purpose, key): same inputs, same number, any process."""
    digest = hashlib.blake2b(f"{seed}\x00{purpose}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _hash_order(ids: list[str] | np.ndarray, seed: int, purpose: str) -> list[str]:
    """`ids` sorted by their stable hash (ties, astronomically rare, by id)."""
    return sorted(map(str, ids), key=lambda i: (stable_hash(seed, purpose, i), i))


def _patient_labels(samples: pd.DataFrame) -> pd.Series:
    """One label per patient: the most frequent among its slides (ties: alphabetically first).

    Patients usually have one label; when they do not (e.g. tumour and normal slides of one
    TCGA case), stratifying on the majority label is the best a grouped split can do.
    """
    counts = samples.groupby(["patient_id", "label"]).size().reset_index(name="n")
    counts = counts.sort_values(["patient_id", "n", "label"], ascending=[True, False, True])
    return counts.drop_duplicates("patient_id").set_index("patient_id")["label"]


def _bucket_folds(patients: pd.Series, n_folds: int, seed: int) -> dict[str, int]:
    """Test fold of each patient (index patient_id, values label) by hash-rank bucketing per class.

    Per class of n patients: rank r in hash order -> fold (floor(r * k / n) + offset) mod k, the
    offset a hash of the class name, so that classes whose n is not a multiple of k put their
    extra patients in different folds.
    """
    fold_of: dict[str, int] = {}
    for label in sorted(patients.unique()):
        order = _hash_order(patients.index[patients == label].to_numpy(), seed, "fold")
        offset = int(stable_hash(seed, "class-offset", label) * n_folds)
        n = len(order)
        for rank, pid in enumerate(order):
            fold_of[pid] = (rank * n_folds // n + offset) % n_folds
    return fold_of


def _carve_val(patients: pd.Series, val_fraction: float, seed: int, fold: int) -> set[str]:
    """Pick a class-stratified `val_fraction` of `patients` (index: patient_id, values: label).

    Each class gives round(fraction * n) patients, the lowest in a hash order seeded with `fold`;
    at least one when the class has two or more (so training keeps at least one patient of every
    class).
    """
    if val_fraction <= 0:
        return set()
    val: set[str] = set()
    for label in sorted(patients.unique()):
        members = patients.index[patients == label].to_numpy()
        if len(members) < 2:
            log.warning("class %r has %d training patient(s): none can go to validation", label,
                        len(members))
            continue
        k = min(len(members) - 1, max(1, int(round(val_fraction * len(members)))))
        val.update(_hash_order(members, seed, f"val-fold{fold}")[:k])
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
        val = _carve_val(_patient_labels(train), val_fraction, seed, fold=0)
        table.loc[samples["patient_id"].isin(val).values, "role"] = "val"
    return table


def fold_table(samples: pd.DataFrame, n_folds: int, seed: int, val_fraction: float) -> pd.DataFrame:
    """Assign every slide a role (train/val/test) in each fold, grouping by patient.

    samples: columns slide_id, patient_id, label (class name), optional split (train/val/test):
    the whole sample sheet, before QC. Returns long format [slide_id, fold, role], n_folds *
    n_slides rows (or one fold 0 when an official split is given), sorted by fold then slide_id.
    Deterministic for a given seed, independent of row order, and stable under edits of other
    patients as the module docstring describes.
    """
    missing = {"slide_id", "patient_id", "label"} - set(samples.columns)
    if missing:
        raise ValueError(f"samples: missing columns {sorted(missing)}")
    if samples["slide_id"].duplicated().any():
        dup = samples["slide_id"][samples["slide_id"].duplicated()].tolist()
        raise ValueError(f"samples: duplicate slide_id {dup[:10]}")
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

    test_fold = pd.Series(_bucket_folds(patients, n_folds, seed))
    slide_fold = samples["patient_id"].map(test_fold).to_numpy()
    parts = []
    for fold in range(n_folds):
        rest = patients[test_fold.reindex(patients.index).to_numpy() != fold]
        val = _carve_val(rest, val_fraction, seed, fold)
        role = np.where(slide_fold == fold, "test",
                        np.where(samples["patient_id"].isin(val), "val", "train"))
        parts.append(pd.DataFrame({"slide_id": samples["slide_id"], "fold": fold, "role": role}))
    table = pd.concat(parts, ignore_index=True)
    return table.sort_values(["fold", "slide_id"]).reset_index(drop=True)[FOLD_COLUMNS]


def write_folds(samples_path: str | Path, out: str | Path, n_folds: int = 5, seed: int = 0,
                val_fraction: float = 0.2, use_official_split: bool = False) -> pd.DataFrame:
    """The folds stage: `fold_table` of the whole sheet (before QC) written to `out` (folds.csv).

    The sheet's `split` column is used only with `use_official_split`, and must then be filled.
    A slide failing QC or being fixed never moves another slide: MIL skips failed and empty
    feature stores instead.
    """
    from slidemil.files import atomic_path
    from slidemil.cohorts.sheet import SampleSheetError, read_sheet

    samples = read_sheet(samples_path)
    if use_official_split:
        if "split" not in samples.columns or samples["split"].isna().any():
            raise SampleSheetError(f"{samples_path}: evaluate.use_official_split is true but the `split` "
                                   "column is missing or has blanks; fill it (train/val/test) or set it false")
    else:
        samples = samples.drop(columns=["split"], errors="ignore")
    table = fold_table(samples, n_folds, seed, val_fraction)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    log.info("%s", table.groupby(["fold", "role"]).size().unstack(fill_value=0).to_string())
    return table
