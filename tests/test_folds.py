"""Patient-level folds: no leakage, stratification, stability under edits, determinism, official split, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from slidemil.cli import main
from slidemil.cohorts.folds import fold_table, stable_hash


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


def _sheet_120() -> pd.DataFrame:
    """120 slides: 70 patients with 1-3 slides, ~40% tumour."""
    rng = np.random.default_rng(7)
    rows, p = [], 0
    while len(rows) < 120:
        label = "tumor" if rng.random() < 0.4 else "normal"
        for s in range(min(int(rng.integers(1, 4)), 120 - len(rows))):
            rows.append({"slide_id": f"S{len(rows):03d}", "patient_id": f"P{p:03d}", "label": label})
        p += 1
    return pd.DataFrame(rows)


def _changed(a: pd.DataFrame, b: pd.DataFrame) -> set[str]:
    """Slides present in both tables whose role differs in some fold."""
    m = a.merge(b, on=["slide_id", "fold"])
    return set(m.loc[m["role_x"] != m["role_y"], "slide_id"])


def _test_fold(table: pd.DataFrame) -> pd.Series:
    return table[table["role"] == "test"].set_index("slide_id")["fold"]


def test_qc_failure_or_fix_moves_no_other_slide():
    """Folds come from the whole sheet; QC only removes the failed slide's rows afterwards."""
    sheet = _sheet_120()
    table = fold_table(sheet, 5, seed=0, val_fraction=0.2)
    for failed in ("S000", "S057", "S119"):
        usable = table[table["slide_id"] != failed]  # what MIL sees when `failed` fails QC
        fixed = table  # ... and after it is fixed
        assert _changed(usable, fixed) == set()
        assert len(usable) == len(fixed) - 5


def test_dropping_a_slide_of_a_patient_with_other_slides_moves_nothing():
    sheet = _sheet_120()
    table = fold_table(sheet, 5, seed=0, val_fraction=0.2)
    multi = sheet.groupby("patient_id")["slide_id"].transform("size") > 1
    assert multi.sum() > 40
    for sid in sheet.loc[multi, "slide_id"]:
        dropped = fold_table(sheet[sheet["slide_id"] != sid], 5, seed=0, val_fraction=0.2)
        assert len(dropped) == len(table) - 5
        assert _changed(table, dropped) == set(), sid


def test_dropping_a_patient_moves_few_others_and_only_of_its_class():
    """Hash-rank bucketing: each of the k - 1 cut points moves by at most one patient.

    StratifiedGroupKFold moved the test fold of up to 104 of the other 119 slides here."""
    sheet = _sheet_120()
    k = 5
    table = fold_table(sheet, k, seed=0, val_fraction=0.2)
    label = sheet.set_index("slide_id")["label"]
    patient = sheet.set_index("slide_id")["patient_id"]
    single = sheet.groupby("patient_id")["slide_id"].transform("size") == 1
    assert single.sum() > 10
    worst_roles = 0
    for sid in sheet.loc[single, "slide_id"]:
        dropped = fold_table(sheet[sheet["slide_id"] != sid], k, seed=0, val_fraction=0.2)
        before, after = _test_fold(table), _test_fold(dropped)
        moved = after.index[before.reindex(after.index) != after]
        assert patient[moved].nunique() <= k - 1, sid
        assert set(label[moved]) <= {label[sid]}, sid  # the other class never moves
        worst_roles = max(worst_roles, patient[list(_changed(table, dropped))].nunique())
    assert worst_roles <= 2 * k  # test moves + a few validation swaps, not a reshuffle


def test_folds_balanced_per_class():
    sheet = _sheet_120()
    k = 5
    table = fold_table(sheet, k, seed=3, val_fraction=0.2)
    merged = table.merge(sheet, on="slide_id").drop_duplicates(["fold", "patient_id"])
    n_class = sheet.drop_duplicates("patient_id")["label"].value_counts()
    for fold, g in merged.groupby("fold"):
        test = g[g["role"] == "test"]["label"].value_counts()
        for c, n in n_class.items():
            assert n // k <= test[c] <= -(-n // k), (fold, c)  # floor/ceil(n / k) patients
            train_c = (g["label"] == c).sum() - test[c]
            val_c = ((g["role"] == "val") & (g["label"] == c)).sum()
            assert val_c == round(0.2 * train_c), (fold, c)
    # the classes' larger folds are spread: total test patients per fold differ by at most 2
    sizes = merged[merged["role"] == "test"].groupby("fold").size()
    assert sizes.max() - sizes.min() <= 2


def test_stable_hash_is_a_pure_function():
    assert stable_hash(0, "fold", "P001") == stable_hash(0, "fold", "P001")
    assert stable_hash(0, "fold", "P001") != stable_hash(1, "fold", "P001")
    assert 0 <= stable_hash(5, "x", "y") < 1


def test_folds_cli_reads_the_whole_sheet(tmp_path):
    rows = [{"slide_id": f"s{i}", "path": "x", "label": ["normal", "tumour"][i % 2], "patient_id": f"p{i}"}
            for i in range(8)]
    pd.DataFrame(rows).to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    assert main(["folds", "--samples", str(tmp_path / "samples.tsv"), "--params", '{"n_folds": 2}',
                 "--out", str(tmp_path / "folds.csv")]) == 0
    assert set(pd.read_csv(tmp_path / "folds.csv")["slide_id"]) == {f"s{i}" for i in range(8)}
    with pytest.raises(SystemExit):  # no QC table any more: QC cannot move folds
        main(["folds", "--samples", str(tmp_path / "samples.tsv"), "--qc", "x", "--out", str(tmp_path / "f.csv")])
