"""Patient-level folds: no leakage, stratification, determinism, official split, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from slidemil.folds import fold_table


def _samples(n_patients: int = 30, pos_fraction: float = 0.4, seed: int = 0) -> pd.DataFrame:
    """Patients with 1-3 slides each; labels per patient."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = "tumor" if p < int(pos_fraction * n_patients) else "normal"
        for s in range(int(rng.integers(1, 4))):
            rows.append({"slide_id": f"P{p:02d}_S{s}", "patient_id": f"P{p:02d}", "label": label})
    return pd.DataFrame(rows)


def test_long_format_and_no_patient_leakage():
    samples = _samples()
    table = fold_table(samples, n_folds=5, seed=0, val_fraction=0.2)
    assert list(table.columns) == ["slide_id", "fold", "role"]
    assert len(table) == 5 * len(samples)
    assert set(table["role"]) == {"train", "val", "test"}
    merged = table.merge(samples, on="slide_id")
    # Within a fold, every patient has exactly one role.
    assert (merged.groupby(["fold", "patient_id"])["role"].nunique() == 1).all()
    # Across folds, every patient is tested exactly once.
    tested = merged[merged["role"] == "test"].groupby("patient_id")["fold"].nunique()
    assert set(tested.index) == set(samples["patient_id"]) and (tested == 1).all()


def test_stratified_test_and_val():
    samples = _samples(n_patients=40, pos_fraction=0.25)
    table = fold_table(samples, n_folds=4, seed=1, val_fraction=0.2)
    merged = table.merge(samples, on="slide_id").drop_duplicates(["fold", "patient_id"])
    for fold, g in merged.groupby("fold"):
        test = g[g["role"] == "test"]["label"].value_counts()
        assert test["tumor"] == 10 // 4 or test["tumor"] == 10 // 4 + 1  # 10 tumour patients / 4 folds
        val = g[g["role"] == "val"]["label"].value_counts()
        assert val.get("tumor", 0) >= 1 and val.get("normal", 0) >= 1  # every class in val
        assert g["role"].eq("train").sum() > g["role"].eq("val").sum()


def test_deterministic_per_seed_and_row_order():
    samples = _samples()
    a = fold_table(samples, 5, seed=3, val_fraction=0.2)
    b = fold_table(samples.sample(frac=1, random_state=9), 5, seed=3, val_fraction=0.2)
    pd.testing.assert_frame_equal(a, b)
    c = fold_table(samples, 5, seed=4, val_fraction=0.2)
    assert not a.equals(c)


def test_official_split_overrides():
    samples = _samples(n_patients=20)
    patients = sorted(samples["patient_id"].unique())
    test_patients = set(patients[::4])
    samples["split"] = np.where(samples["patient_id"].isin(test_patients), "test", "train")
    table = fold_table(samples, n_folds=5, seed=0, val_fraction=0.25)
    assert set(table["fold"]) == {0} and len(table) == len(samples)
    merged = table.merge(samples, on="slide_id")
    assert (merged.loc[merged["split"] == "test", "role"] == "test").all()
    # No val given: carved from train, patient-level, one per class at least.
    val = merged[merged["role"] == "val"]
    assert set(val["split"]) == {"train"} and set(val["label"]) == {"tumor", "normal"}
    assert (merged.groupby("patient_id")["role"].nunique() == 1).all()


def test_official_split_with_val_is_kept():
    samples = _samples(n_patients=12)
    samples["split"] = np.where(samples["patient_id"] < "P04", "test",
                                np.where(samples["patient_id"] < "P06", "val", "train"))
    table = fold_table(samples, n_folds=5, seed=0, val_fraction=0.5)
    merged = table.merge(samples, on="slide_id")
    assert (merged["role"] == merged["split"]).all()


def test_partial_split_and_bad_values_raise():
    samples = _samples(n_patients=12)
    samples["split"] = ["test"] + [None] * (len(samples) - 1)
    with pytest.raises(ValueError, match="split"):
        fold_table(samples, 3, 0, 0.2)
    samples["split"] = "holdout"
    with pytest.raises(ValueError, match="train/val/test"):
        fold_table(samples, 3, 0, 0.2)


def test_empty_split_column_means_kfold():
    samples = _samples(n_patients=12)
    samples["split"] = np.nan
    assert set(fold_table(samples, 3, 0, 0.2)["fold"]) == {0, 1, 2}


def test_too_few_patients_names_class_and_fix():
    samples = _samples(n_patients=20, pos_fraction=0.15)  # 3 tumour patients
    with pytest.raises(ValueError, match=r"'tumor'.*n_folds=5.*evaluate\.n_folds"):
        fold_table(samples, n_folds=5, seed=0, val_fraction=0.2)
