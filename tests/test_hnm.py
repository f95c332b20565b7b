"""Hard-negative mining (slidemil.hnm): the mining quantiles, the gate, label hygiene, the loss
steps, and the workflow loop (rounds as a wildcard) on the tiny cohort."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
import zarr

from slidemil.encoders import read_state_dict
from slidemil.config import load_config
from slidemil.config import HNMParams
from slidemil.hnm.finetune import MinedPairs, finetune_round, spl_ratio
from slidemil.hnm.mine import PseudoLabels, gate, hard_negatives, mine_round, pseudo_positives
from slidemil.plan.catalogue import hnm_runs, round_encoders
from slidemil.ssl.data import SlideSource
from slidemil.ssl.losses.hnm_steps import STEP_A, STEP_B, encode_labels, hnm_steps
from slidemil.ssl.losses.hnm_supcon import hnm_supcon
from slidemil.slides.store import create_tile_arrays, write_features, write_index_arrays
from slidemil.files import atomic_path

TINY = dict(base="b", rounds=2, epochs=2, warmup_epochs=1, batch_size=8, tiles_per_epoch=16, lr=0.05,
            precision="fp32", mil={"epochs": 3, "dropout": 0.0})
BASE = {"arch": "resnet18", "depth": 1, "input_size": 16}


def test_hard_negatives_are_the_top_quantile_of_negative_slides_tiles():
    scores = {"n1": np.arange(10) / 100, "n2": np.arange(10, 20) / 100, "p": np.full(5, 0.99)}
    labels = {"n1": 0, "n2": 0, "p": 1}
    neg = hard_negatives(scores, labels, 0.2)  # top 20% of the 20 negative tiles: 0.16 .. 0.19 (cut 0.152)
    assert neg["n1"].sum() == 0 and neg["p"].sum() == 0  # positive slides never give negatives
    assert np.flatnonzero(neg["n2"]).tolist() == [6, 7, 8, 9]
    neg05 = hard_negatives(scores, labels, 0.05)
    assert np.flatnonzero(neg05["n2"]).tolist() == [9]
    assert sum(m.sum() for m in hard_negatives(scores, labels, 1.0).values()) == 20


def test_pseudo_positives_above_threshold_then_self_paced_top_quantile():
    scores = {"p1": np.array([0.1, 0.35, 0.5, 0.9]), "p2": np.array([0.29, 0.6, 0.7, 0.8]), "n": np.full(3, 0.95)}
    labels = {"p1": 1, "p2": 1, "n": 0}
    full = pseudo_positives(scores, labels, 0.3)
    assert full["p1"].tolist() == [False, True, True, True] and full["p2"].tolist() == [False, True, True, True]
    assert not full["n"].any()  # a negative slide's tile is never a pseudo-positive, whatever its score
    top = pseudo_positives(scores, labels, 0.3, ratio=1 / 3)  # 6 candidates -> the top 2: 0.9 and 0.8
    assert top["p1"].tolist() == [False, False, False, True] and top["p2"].tolist() == [False, False, False, True]


def test_self_paced_ratio_grows_after_warm_up():
    p = HNMParams(base="b", epochs=5, warmup_epochs=1, spl_start=0.2, spl_end=0.8)
    assert [round(spl_ratio(p, e), 3) for e in range(1, 5)] == [0.2, 0.4, 0.6, 0.8]


def test_gate_keeps_labels_only_when_the_validation_metric_does_not_drop():
    r1 = gate(0.5, None)
    assert r1["accepted"] and r1["best"] == 0.5
    r2 = gate(0.4, r1)
    assert not r2["accepted"] and r2["best"] == 0.5 and r2["best_before"] == 0.5
    r3 = gate(0.5, r2)  # equal to the best earlier round: accepted, as the authors' >=
    assert r3["accepted"]


def test_step_losses_are_the_authors_two_supcon_calls():
    g = torch.Generator().manual_seed(0)
    z1 = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=1)
    z2 = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=1)
    inst = torch.tensor([1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0])
    bag = inst.clone()
    step = torch.tensor([STEP_A] * 6 + [STEP_B] * 6)
    codes = torch.tensor([encode_labels(i, b, s) for i, b, s in zip(inst, bag, step)])
    a, b = slice(0, 6), slice(6, 12)
    want = (hnm_supcon(z1[a], z2[a], inst[a], bag[a], pair_mode="negative", mask_uncertain_neg=True)
            + hnm_supcon(z1[b], z2[b], inst[b], bag[b], pair_mode="positive"))
    assert torch.allclose(hnm_steps(z1, z2, codes), want)
    # rows of one step do not enter the other's contrast: permuting B rows leaves A's part alone
    only_a = hnm_steps(z1[a], z2[a], codes[a])
    assert torch.allclose(only_a, hnm_supcon(z1[a], z2[a], inst[a], bag[a], pair_mode="negative",
                                             mask_uncertain_neg=True))


def test_runs_are_checked_and_rounds_named():
    def runs_of(hnm: dict) -> dict[str, HNMParams]:
        return load_config({"samples": "s.tsv", "classes": ["a", "b"], "encoders": [], "hnm": hnm}).hnm

    runs = hnm_runs(runs_of({"h": {"base": "enc", "rounds": 3}, "off": {"base": "enc", "enabled": False}}), ["enc"])
    assert list(runs) == ["h"] and list(round_encoders(runs)) == ["h-r1", "h-r2", "h-r3"]
    with pytest.raises(ValueError, match="base 'nope' is not an encoder"):
        hnm_runs(runs_of({"h": {"base": "nope"}}), ["enc"])
    with pytest.raises(ValueError, match=r"config hnm.h: unknown keys \['neg_ration'\]"):
        runs_of({"h": {"base": "enc", "neg_ration": 0.1}})
    with pytest.raises(ValueError, match=r"config hnm.h.mil: unknown keys \['epoch'\]"):
        runs_of({"h": {"base": "enc", "mil": {"epoch": 3}}})
    # raising `rounds` does not change what a finished round was made with
    assert HNMParams(base="e", rounds=2).round_params() == HNMParams(base="e", rounds=5).round_params()


# --- a tiny fold: tile stores + feature stores ---------------------------------------------------

LABELS = {"s0": 0, "s1": 0, "s2": 0, "s3": 1, "s4": 1, "s5": 1, "s6": 0, "s7": 1, "s8": 0}
ROLES = {**{f"s{i}": "train" for i in range(6)}, "s6": "val", "s7": "val", "s8": "test"}


def _store(root, sid, seed, n=12, size=16, d=8):
    rng = np.random.default_rng(seed)
    grid = np.array([(i % 4, i // 4) for i in range(n)])
    tiles = root / "tiles" / f"{sid}.zarr"
    with atomic_path(tiles) as tmp:
        g = zarr.open_group(tmp, mode="w", zarr_format=3)
        create_tile_arrays(g, n, size, shard_tiles=8)[:] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        write_index_arrays(g, grid * size, grid)
        g.attrs.update({"slide_id": sid, "status": "ok", "tile_size_level0": size})
    feats = rng.normal(size=(n, d))
    if LABELS[sid]:
        feats[:3] += 2.0  # three witness tiles per positive slide
    write_features(root / "features" / f"{sid}.zarr", feats, grid * size, grid, {"slide_id": sid})
    return str(tiles)


@pytest.fixture
def fold(tmp_path):
    tiles = [_store(tmp_path, s, i) for i, s in enumerate(LABELS)]
    pd.DataFrame({"slide_id": list(ROLES), "fold": 0, "role": list(ROLES.values())}).to_csv(tmp_path / "folds.csv",
                                                                                            index=False)
    return tmp_path, tiles


def _sheet(root, labels, name):
    rows = ["slide_id\tpath\tlabel\tpatient_id"] + [f"{s}\t{s}.tiff\t{'tumour' if y else 'normal'}\tP{s}"
                                                   for s, y in labels.items()]
    (root / name).write_text("\n".join(rows) + "\n")
    return root / name


def _round(root, tiles, labels, name, params=HNMParams.from_dict(TINY)):
    out = root / name
    mine_round(root / "features", root / "folds.csv", _sheet(root, labels, f"{name}.tsv"), 0, params,
               ["normal", "tumour"], out, seed=0, round_=1)
    finetune_round(tiles, out / "pseudo_labels.npz", params, BASE, None, out / "enc" / "encoder.pt", seed=0,
                   device="cpu")
    return PseudoLabels.load(out / "pseudo_labels.npz"), read_state_dict(out / "enc" / "encoder.pt")


def test_test_slide_labels_never_reach_mining_or_the_fine_tuned_encoder(fold, one_torch_thread):
    root, tiles = fold
    pl, w = _round(root, tiles, LABELS, "base")
    assert sorted(pl.scores) == [f"s{i}" for i in range(6)]  # only training slides are mined
    assert json.loads((root / "base" / "gate.json").read_text())["accepted"]
    pl_t, w_t = _round(root, tiles, {**LABELS, "s8": 1}, "flip_test")  # the test slide's label changes
    assert pl_t.digest() == pl.digest() and all(torch.equal(w[k], w_t[k]) for k in w)
    pl_r, _ = _round(root, tiles, {**LABELS, "s0": 1, "s3": 0}, "flip_train")  # the test can fail
    assert pl_r.digest() != pl.digest()


def test_a_killed_fine_tune_resumes_to_the_same_weights(fold, one_torch_thread):
    root, tiles = fold
    params = HNMParams.from_dict(TINY)
    mine_round(root / "features", root / "folds.csv", _sheet(root, LABELS, "s.tsv"), 0, params, ["normal", "tumour"],
               root / "r1", seed=0, round_=1)
    labels = root / "r1" / "pseudo_labels.npz"
    finetune_round(tiles, labels, params, BASE, None, root / "a" / "encoder.pt", seed=0, device="cpu")

    def die(epoch):
        if epoch == 0:
            raise KeyboardInterrupt("preempted")

    with pytest.raises(KeyboardInterrupt):
        finetune_round(tiles, labels, params, BASE, None, root / "b" / "encoder.pt", seed=0, device="cpu",
                       on_epoch_end=die)
    seen = []
    finetune_round(tiles, labels, params, BASE, None, root / "b" / "encoder.pt", seed=0, device="cpu",
                   on_epoch_end=seen.append)
    assert seen == [1]  # epoch 0 came from the checkpoint
    a, b = read_state_dict(root / "a" / "encoder.pt"), read_state_dict(root / "b" / "encoder.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # other pseudo labels: the checkpoint is not resumed
    pl = PseudoLabels.load(labels)
    PseudoLabels({s: x[::-1].copy() for s, x in pl.scores.items()}, pl.labels, 1).save(root / "other.npz")
    seen.clear()
    finetune_round(tiles, root / "other.npz", params, BASE, None, root / "b" / "encoder.pt", seed=0, device="cpu",
                   on_epoch_end=seen.append)
    assert seen == [0, 1]


def test_mined_pairs_plan_steps_a_then_b_after_warm_up(fold):
    root, tiles = fold
    rng = np.random.default_rng(0)
    scores = {s: rng.random(12).astype(np.float32) for s in [f"s{i}" for i in range(6)]}
    pl = PseudoLabels(scores, {s: LABELS[s] for s in scores}, 1)
    p = HNMParams.from_dict({**TINY, "neg_ratio": 0.25})
    ds = MinedPairs([SlideSource(s, tiles[i], None, LABELS[s]) for i, s in enumerate(scores)], pl, p, seed=0)
    neg = hard_negatives(scores, pl.labels, 0.25)
    ds.set_epoch(0)  # warm-up: both halves of a step are step A
    steps = ds.plan[:, 2] // 4
    assert (steps == STEP_A).all() and len(ds) == 2 * p.tiles_per_epoch
    ds.set_epoch(1)
    b = p.batch_size
    assert (ds.plan[:b, 2] // 4 == STEP_A).all() and (ds.plan[b: 2 * b, 2] // 4 == STEP_B).all()
    for slide, tile, code in ds.plan:
        sid = ds.order[slide]
        if code % 2 == 0:  # a negative row is a mined hard negative
            assert neg[sid][tile]
        else:  # a positive row: a positive slide's tile above the threshold
            assert pl.labels[sid] == 1 and scores[sid][tile] > p.pos_threshold
    pos_b = ds.plan[b: 2 * b][ds.plan[b: 2 * b, 2] % 2 == 1]
    assert len(pos_b) == max(1, round(b * p.pos_query_fraction))  # step B: few self-paced positives


def test_mining_evidence_counts_mined_negatives_inside_mimics(fold):
    from slidemil.hnm.evidence import mining_evidence

    root, tiles = fold
    train = [f"s{i}" for i in range(6)]
    # mimics: the first grid column (tile centres x = 8) of every slide; those tiles score highest
    square = [[[0, 0], [16, 0], [16, 64], [0, 64], [0, 0]]]
    geo = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"classification": "mimic"},
                                                      "geometry": {"type": "Polygon", "coordinates": square}}]}
    (root / "mimic.geojson").write_text(json.dumps(geo))
    col0 = np.arange(12) % 4 == 0
    scores = {s: np.where(col0, 0.9, 0.1).astype(np.float32) for s in train}
    d = root / "fold0" / "round1"
    PseudoLabels(scores, {s: LABELS[s] for s in train}, 1).save(d / "pseudo_labels.npz")
    (d / "gate.json").write_text(json.dumps({"accepted": True, "val_metric": 0.5}))
    table = mining_evidence([(0, 1, d)], {s: tiles[i] for i, s in enumerate(LABELS)},
                            {s: str(root / "mimic.geojson") for s in train}, {}, HNMParams(base="b", neg_ratio=0.25))
    row = table[table["fold"] == 0].iloc[0]
    assert row["n_negative_tiles"] == 36 and row["n_mimic_tiles"] == 9 and row["n_mined"] == 9
    assert row["mined_in_mimic"] == 1.0 and row["mimic_base_rate"] == 0.25 and row["enrichment"] == 4.0
    assert table[table["fold"] == "all"].iloc[0]["n_mined"] == 9


# --- the loop in the workflow ------------------------------------------------------------------


def _enable_hnm(workdir, rounds: int) -> None:
    from test_workflow import _tiny_config

    path = _tiny_config(workdir)
    cfg = yaml.safe_load(path.read_text())
    cfg["hnm"]["simclr-hnm"].update(enabled=True, rounds=rounds, epochs=2, warmup_epochs=1, batch_size=16,
                                    tiles_per_epoch=32, mil={"epochs": 3})
    path.write_text(yaml.safe_dump(cfg))


@pytest.mark.e2e
def test_rounds_resume_and_only_new_rounds_run(finished_run, tmp_path):
    """Round 1 runs; raising `rounds` to 2 plans round 2 only (one mine + one fine-tune per fold, and
    the re-embedding, MIL and heatmaps of the new encoder), never round 1 again; the benchmark gets a
    row per round and model, the claims row compares each round with round 0, mining.csv a row per
    fold and round."""
    from test_workflow import planned_jobs, snakemake

    # a copy of the shared run (mtimes kept): the rounds' encoders must not leak into the other e2e tests
    run = tmp_path / "wf"
    shutil.copytree(finished_run, run, symlinks=True)
    _enable_hnm(run, rounds=1)
    jobs = planned_jobs(run)
    # per fold (2) one mining and one fine-tune job, and 2 embed batches
    assert jobs.get("hnm_mine") == 2 and jobs.get("hnm_finetune") == 2 and jobs.get("embed_fold") == 2 * 2, jobs
    assert "pretrain" not in jobs  # the base encoder (round 0) is done
    snakemake(run)
    first = {p: p.stat().st_mtime_ns for p in (run / "results" / "hnm").rglob("*") if p.is_file()
             and "round1" in str(p)}
    _enable_hnm(run, rounds=2)
    jobs = planned_jobs(run)
    assert jobs.get("hnm_mine") == 2 and jobs.get("hnm_finetune") == 2, jobs  # round 2 of each fold only
    assert jobs.get("embed_fold") == 2 * 2 and jobs.get("mil") == 2 * 2 * 2, jobs  # 1 new encoder x folds x ...
    dry = snakemake(run, "-n").stdout
    assert "round1" not in dry.replace("round1/gate.json", "").replace("round1/pseudo_labels.npz", "")
    snakemake(run)
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())  # round 1 untouched
    results = run / "results"
    bench = pd.read_csv(results / "benchmark.csv")
    assert {"simclr-hnm-r1", "simclr-hnm-r2"} <= set(bench["encoder"])
    assert len(bench[bench["encoder"] == "simclr-hnm-r2"]) == 2  # one row per MIL model
    claims = pd.read_csv(results / "claims.csv")
    hnm = claims[claims["claim"] == "hnm_rounds_beat_round0"]
    assert set(zip(hnm["a_encoder"], hnm["b_encoder"])) == {("simclr-hnm-r1", "simclr-spatial"),
                                                            ("simclr-hnm-r2", "simclr-spatial")}
    assert hnm["auc_diff"].notna().all()
    mining = pd.read_csv(results / "hnm" / "simclr-hnm" / "mining.csv")
    per_fold = mining[mining["fold"].astype(str) != "all"]
    assert sorted(zip(per_fold["fold"].astype(int), per_fold["round"])) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert (mining["n_mined"] > 0).all() and (mining["n_mined"] < mining["n_negative_tiles"]).all()
    pooled = mining[mining["fold"].astype(str) == "all"].set_index("round")
    assert pooled.loc[1, "n_mined"] == per_fold.loc[per_fold["round"] == 1, "n_mined"].sum()
    gate = json.loads((results / "hnm" / "simclr-hnm" / "fold0" / "round2" / "gate.json").read_text())
    assert gate["labels_from_round"] == (2 if gate["accepted"] else 1)
    assert (run / "results" / "encoders" / "simclr-hnm-r2" / "fold1" / "checkpoints" / "last.pt").exists()
