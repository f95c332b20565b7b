"""The claims registry: which comparisons each claim finds from encoder metadata, and its verdict."""

from __future__ import annotations

import math

import pytest

from slidemil.evaluate.claims import (CLAIM_COLUMNS, CLAIMS, ClaimContext, claims_table, encoder_metadata,
                             normalise_models, verdict)

ENCODERS = [
    {"name": "rand", "arch": "resnet18"},
    {"name": "simclr_aug", "arch": "resnet18", "objective": "simclr", "sampler": "augment"},
    {"name": "simclr_sp", "arch": "resnet18", "objective": "simclr", "sampler": "spatial"},
    {"name": "byol_aug", "arch": "resnet18", "objective": "byol"},  # sampler absent: augment
    {"name": "byol_sp", "arch": "resnet18", "objective": "byol", "sampler": "spatial"},
    {"name": "vicreg_sp50", "arch": "resnet50", "objective": "vicreg", "sampler": "spatial"},  # no partner
    {"name": "wsc", "arch": "resnet18", "objective": "weaksupcon"},
    {"name": "wsc50", "arch": "resnet50", "objective": "weaksupcon"},  # no SSL resnet50 augment partner
    {"name": "hnm0", "arch": "resnet18", "objective": "supcon", "hnm_round": 0},
    {"name": "hnm1", "arch": "resnet18", "objective": "supcon", "hnm_round": 1},
    {"name": "hnm2", "arch": "resnet18", "objective": "supcon", "hnm_round": 2, "hnm_base": "hnm0"},
]


MODELS = {"abmil": {}, "mean": {}, "srmil": {"lr": 0.0005},
          "srmil_plain": {"model": "srmil", "w_gen": 0, "mask_rate": 0},
          "srmil_w05": {"model": "srmil", "w_gen": 0.5}}


def _ctx(encoders=ENCODERS, models=MODELS, ci=(0.01, 0.1), missing=()):
    models = normalise_models(models)
    methods = {(e["name"], m) for e in encoders for m in models} - set(missing)
    calls = []

    def compare(a, b):
        calls.append((a, b))
        return {"n_slides": 48, "auc_a": 0.9, "auc_b": 0.85, "auc_diff": 0.05, "diff_ci_lo": ci[0],
                "diff_ci_hi": ci[1], "p_value": 0.01}

    ctx = ClaimContext(encoders=list(encoders), methods=methods, baseline_encoder="rand",
                       baseline_model="abmil", margin=0.02, compare=compare, models=models)
    return ctx, calls


@pytest.mark.parametrize("lo, hi, expected", [
    (0.01, 0.10, "holds"),
    (-0.10, -0.01, "does not hold"),      # B significantly better
    (-0.05, 0.01, "does not hold"),       # rules out a gain as large as the margin
    (-0.05, 0.05, "inconclusive"),
    (0.001, 0.01, "holds"),               # significant, even if small
    (float("nan"), float("nan"), "inconclusive"),
])
def test_verdict(lo, hi, expected):
    assert verdict(lo, hi, margin=0.02) == expected


def test_verdict_margin_zero_needs_significant_reverse():
    assert verdict(-0.05, 0.01, margin=0.0) == "inconclusive"
    assert verdict(-0.05, -0.001, margin=0.0) == "does not hold"


def test_registry_has_the_four_papers_and_the_floor():
    assert list(CLAIMS) == ["floor_abmil_beats_mean", "weaksupcon_beats_ssl", "spatial_pairs_beat_augment",
                            "hnm_rounds_beat_round0", "spatial_regularisation_beats_none"]


def test_comparisons_found_from_metadata():
    ctx, calls = _ctx()
    table = claims_table(ctx)
    assert list(table.columns) == CLAIM_COLUMNS
    by = {name: g["comparison"].tolist() for name, g in table.groupby("claim", sort=False)}
    assert by["floor_abmil_beats_mean"] == ["rand/abmil vs rand/mean"]
    # WeakSupCon vs SSL encoders of the same arch and sampler (not the supcon HNM chain; wsc50's only
    # resnet50 SSL partner uses spatial pairs).
    assert by["weaksupcon_beats_ssl"] == ["wsc/abmil vs simclr_aug/abmil", "wsc/abmil vs byol_aug/abmil"]
    # Per SSL objective, spatial vs augment-only; vicreg has no augment partner.
    assert by["spatial_pairs_beat_augment"] == ["simclr_sp/abmil vs simclr_aug/abmil",
                                                "byol_sp/abmil vs byol_aug/abmil"]
    assert by["hnm_rounds_beat_round0"] == ["hnm1/abmil vs hnm0/abmil", "hnm2/abmil vs hnm0/abmil"]
    # srmil (default w_gen 1.8) and srmil_w05 vs the w_gen 0 run, found by parameters, not names.
    assert by["spatial_regularisation_beats_none"] == ["rand/srmil vs rand/srmil_plain",
                                                       "rand/srmil_w05 vs rand/srmil_plain"]
    assert (table["verdict"] == "holds").all() and len(calls) == len(table)
    assert table["n_slides"].eq(48).all()


def test_not_run_today_with_notes():
    ctx, calls = _ctx(encoders=[{"name": "rand", "arch": "resnet18"}], models=["abmil", "mean"],
                      ci=(-0.03, 0.08))
    table = claims_table(ctx).set_index("claim")
    assert table.loc["floor_abmil_beats_mean", "verdict"] == "inconclusive"
    rest = table.drop("floor_abmil_beats_mean")
    assert (rest["verdict"] == "not run").all() and rest["note"].str.len().gt(10).all()
    assert "weaksupcon" in rest.loc["weaksupcon_beats_ssl", "note"]
    assert "w_gen: 0" in rest.loc["spatial_regularisation_beats_none", "note"]
    assert rest["auc_diff"].isna().all() and len(calls) == 1


def test_missing_predictions_are_not_run_not_a_crash():
    ctx, calls = _ctx(missing=[("rand", "mean")])
    row = claims_table(ctx, ["floor_abmil_beats_mean"]).iloc[0]
    assert row["verdict"] == "not run" and row["note"] == "no predictions for rand/mean" and not calls
    assert math.isnan(row["auc_diff"])


def test_hnm_base_must_be_an_encoder():
    encoders = [{"name": "r1", "arch": "resnet18", "hnm_round": 1, "hnm_base": "gone"}]
    ctx, _ = _ctx(encoders=encoders)
    row = claims_table(ctx, ["hnm_rounds_beat_round0"]).iloc[0]
    assert row["verdict"] == "not run" and "hnm_base 'gone' is not an encoder" in row["note"]


def test_normalise_models():
    assert normalise_models(["mean", "abmil"]) == {"mean": {}, "abmil": {}}
    assert normalise_models({"a": None, "b": {"model": "srmil"}}) == {"a": {}, "b": {"model": "srmil"}}
    assert normalise_models(None) == {}


def test_ssl_objectives_are_the_registered_label_free_ones():
    from slidemil.evaluate.claims import ssl_objectives
    from slidemil.ssl.losses import OBJECTIVES

    assert set(ssl_objectives()) == {name for name, cls in OBJECTIVES.items() if not cls.uses_labels}
    assert {"simclr", "dino"} <= set(ssl_objectives()) and "weaksupcon" not in ssl_objectives()


def test_pretrained_encoders_join_with_their_metadata():
    pretrain = {"simclr-spatial": {"objective": "simclr", "sampler": "spatial", "backbone": "resnet18"},
                "simclr-aug": {"epochs": 4},  # all defaults: simclr, augment, resnet18
                "wsc": {"objective": "weaksupcon"}}
    encoders = encoder_metadata([{"name": "rand", "arch": "resnet18"}], pretrain)
    assert [e["name"] for e in encoders] == ["rand", "simclr-spatial", "simclr-aug", "wsc"]
    assert encoders[2] == {"name": "simclr-aug", "objective": "simclr", "sampler": "augment", "arch": "resnet18",
                           "epochs": 4}
    ctx, _ = _ctx(encoders=encoders)
    table = claims_table(ctx, ["weaksupcon_beats_ssl", "spatial_pairs_beat_augment"])
    assert table["comparison"].tolist() == ["wsc/abmil vs simclr-aug/abmil", "simclr-spatial/abmil vs simclr-aug/abmil"]
