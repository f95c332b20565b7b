"""MIL models, training loop and per-fold outputs on small synthetic bags (CPU, seconds)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from slidemil.cohorts.folds import fold_table
from slidemil.evaluate.metrics import auc
from slidemil.mil.models import MIL_MODELS, build_mil
from slidemil.mil.data import Standardized
from slidemil.mil.loop import train_mil
from slidemil.mil.run import run_fold
from slidemil.slides.store import write_features

FAST = {"epochs": 8, "lr": 1e-2, "hidden": 16, "dropout": 0.0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load_mil(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """A trained model from model.pt (standardisation included), in eval mode, and its config: model.pt
    holds all it needs."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = ckpt["config"]
    inner = build_mil(cfg["model"], cfg["in_dim"], cfg["n_classes"], **cfg["model_params"])
    net = Standardized(inner, np.zeros(cfg["in_dim"]), np.ones(cfg["in_dim"]))
    net.load_state_dict(ckpt["state_dict"])
    return net.eval(), cfg


def make_bags(seed: int, n_train: int = 40, n_val: int = 12, n_test: int = 24, d: int = 16,
              shift: float = 10.0, offset: float = 0.3) -> tuple[dict, dict, dict]:
    """Bags of 50-200 random d-vectors; positive bags hide 1-3 instances shifted along e_0.

    The witness fraction (<= 3 of 50-200) is tiny and each bag has its own offset, so the bag
    mean barely moves with the label (mean pooling ~0.4-0.8 AUC) while an attention that finds
    the shifted instances separates the bags.
    """
    rng = np.random.default_rng(seed)
    bags, labels, roles = {}, {}, {}
    for role, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for i in range(n):
            sid, y = f"{role}{i:03d}", i % 2
            x = rng.standard_normal((int(rng.integers(50, 200)), d)) + offset * rng.standard_normal(d)
            if y:
                x[: int(rng.integers(1, 4)), 0] += shift
            bags[sid], labels[sid], roles[sid] = rng.permutation(x).astype(np.float32), y, role
    return bags, labels, roles


def test_registry_builds_each_model_with_right_shapes():
    assert {"mean", "max", "abmil"} <= set(MIL_MODELS)
    x = torch.randn(37, 24)
    for name in ("mean", "max", "abmil"):
        for n_classes in (2, 3):
            net = build_mil(name, 24, n_classes, hidden=8, dropout=0.1).eval()
            logits, scores = net(x)
            assert logits.shape == (n_classes,) and scores.shape == (37,)
    _, attn = build_mil("abmil", 24, 2).eval()(x)
    assert torch.all(attn >= 0) and attn.sum().item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(KeyError, match="unknown MIL model"):
        build_mil("nope", 24, 2)
    with pytest.raises(TypeError, match="hiden"):
        build_mil("abmil", 24, 2, hiden=8)
    with pytest.raises(ValueError, match="non-empty"):
        build_mil("abmil", 24, 2)(torch.zeros(0, 24))


def test_zero_instance_bag_is_skipped_with_warning(caplog):
    bags, labels, roles = make_bags(0, n_train=6, n_val=2, n_test=2)
    bags["empty_slide"], labels["empty_slide"], roles["empty_slide"] = np.zeros((0, 16), np.float32), 1, "train"
    with caplog.at_level(logging.WARNING):
        res = train_mil(bags, labels, roles, "abmil", 2, {**FAST, "epochs": 1}, seed=0)
    assert "empty_slide" in caplog.text
    assert res.skipped == ["empty_slide"] and "empty_slide" not in res.probs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_abmil_finds_rare_witnesses_and_beats_mean(seed):
    bags, labels, roles = make_bags(seed)
    test = sorted(s for s in roles if roles[s] == "test")
    y = np.array([labels[s] for s in test])
    runs = {m: train_mil(bags, labels, roles, m, 2, FAST, seed=seed) for m in ("abmil", "mean")}
    result = {m: auc(y, np.stack([r.probs[s] for s in test])) for m, r in runs.items()}
    assert result["abmil"] >= 0.9, result
    assert result["abmil"] > result["mean"], result
    # Attention peaks on a shifted (witness) instance in every positive test bag.
    for s in test:
        if labels[s] == 1:
            attn = runs["abmil"].instance_scores[s]
            assert attn.shape == (len(bags[s]),) and bags[s][int(np.argmax(attn)), 0] > 5


def test_same_seed_same_predictions_and_test_labels_unused():
    bags, labels, roles = make_bags(3, n_train=12, n_val=6, n_test=6)
    params = {**FAST, "epochs": 3, "dropout": 0.25}
    a = train_mil(bags, labels, roles, "abmil", 2, params, seed=7)
    b = train_mil(bags, labels, roles, "abmil", 2, params, seed=7)
    assert a.probs.keys() == b.probs.keys()
    for s in a.probs:
        np.testing.assert_array_equal(a.probs[s], b.probs[s])
        np.testing.assert_array_equal(a.instance_scores[s], b.instance_scores[s])
    assert a.history == b.history
    # Model selection never looks at test labels: flipping them changes nothing.
    flipped = {s: (1 - y if roles[s] == "test" else y) for s, y in labels.items()}
    c = train_mil(bags, flipped, roles, "abmil", 2, params, seed=7)
    for s in a.probs:
        np.testing.assert_array_equal(a.probs[s], c.probs[s])
    # Selected epoch = lowest validation loss, earliest on ties.
    val_losses = [h["val_loss"] for h in a.history]
    assert a.best_epoch == int(np.argmin(val_losses)) + 1


@pytest.mark.parametrize("model", ["srmil", "transmil"])
def test_graph_and_grid_models_are_reproducible_on_cpu(model):
    # CPU runs skip torch's deterministic-algorithms switch (slow to import): the scatter (SRMIL's
    # GAT) and padding/attention (TransMIL) kernels must still give identical runs for one seed.
    from slidemil.mil.data import SlideBag

    arrays, labels, roles = make_bags(4, n_train=6, n_val=2, n_test=2, d=8)
    bags = {s: SlideBag(x, grid=np.stack([np.arange(len(x)) % 12, np.arange(len(x)) // 12], 1))
            for s, x in arrays.items()}
    params = {"epochs": 2, "lr": 1e-3}
    a, b = (train_mil(bags, labels, roles, model, 2, params, seed=3) for _ in range(2))
    for s in a.probs:
        np.testing.assert_array_equal(a.probs[s], b.probs[s])
        np.testing.assert_array_equal(a.instance_scores[s], b.instance_scores[s])
    assert a.history == b.history


def test_run_fold_end_to_end(tmp_path, caplog):
    bags, labels, _ = make_bags(0, n_train=16, n_val=0, n_test=0, d=8)
    classes = ["normal", "tumor"]
    features = tmp_path / "features" / "enc"
    rows = []
    for i, (sid, x) in enumerate(sorted(bags.items())):
        grid = np.stack([np.arange(len(x)) % 10, np.arange(len(x)) // 10], 1)
        write_features(features / f"{sid}.zarr", x, grid * 256, grid, {"encoder": "enc"})
        rows.append({"slide_id": sid, "patient_id": f"p{i}", "label": classes[labels[sid]]})
    write_features(features / "blank.zarr", np.zeros((0, 8)), np.zeros((0, 2)), np.zeros((0, 2)), {})
    rows.append({"slide_id": "blank", "patient_id": "pblank", "label": "tumor"})
    samples = pd.DataFrame(rows)
    samples.to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    folds = fold_table(samples, n_folds=3, seed=0, val_fraction=0.25)
    folds.to_csv(tmp_path / "folds.csv", index=False)
    out = tmp_path / "mil" / "enc" / "abmil" / "fold1"

    with caplog.at_level(logging.WARNING):
        run_fold(features, tmp_path / "folds.csv", tmp_path / "samples.tsv", 1, "abmil",
                 {"epochs": 2, "hidden": 8}, out, seed=0, classes=classes)
    assert "blank" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["attention.npz", "history.csv", "model.pt",
                                                     "predictions.csv"]
    pred = pd.read_csv(out / "predictions.csv")
    assert list(pred.columns) == ["slide_id", "label", "role", "prob_normal", "prob_tumor", "pred"]
    fold1 = folds[(folds["fold"] == 1) & (folds["slide_id"] != "blank")]
    assert sorted(pred["slide_id"]) == sorted(fold1["slide_id"])
    assert dict(zip(pred["slide_id"], pred["role"])) == dict(zip(fold1["slide_id"], fold1["role"]))
    np.testing.assert_allclose(pred[["prob_normal", "prob_tumor"]].sum(axis=1), 1, atol=1e-6)
    hist = pd.read_csv(out / "history.csv")
    assert list(hist.columns) == ["epoch", "train_loss", "val_loss", "val_auc"] and len(hist) == 2
    test_ids = sorted(pred.loc[pred["role"] == "test", "slide_id"])
    with np.load(out / "attention.npz") as att:
        assert sorted(att.files) == test_ids
        assert all(att[s].shape == (len(bags[s]),) for s in test_ids)
    net, cfg = load_mil(out / "model.pt")
    assert cfg["model"] == "abmil" and cfg["classes"] == classes and cfg["skipped"] == ["blank"]
    s = test_ids[0]
    with torch.no_grad():
        p = torch.softmax(net(torch.from_numpy(bags[s].astype(np.float16).astype(np.float32)))[0], 0)
    np.testing.assert_allclose(p.numpy(), pred.set_index("slide_id").loc[s, ["prob_normal", "prob_tumor"]]
                               .to_numpy(float), rtol=1e-5, atol=1e-6)
    assert not list(out.glob(".*tmp*"))  # no temp files left behind


# --- per-model config blocks, MIRank pairs, streamed bags with graphs -------------------------------

def test_mil_config_blocks_checked_against_the_registry_without_building():
    import yaml

    from slidemil.config import MilConfig, from_block
    from slidemil.mil.params import check_model_values, mil_runs, run_params

    def runs(mil: dict, n_classes: int = 2) -> dict:
        return mil_runs(from_block(MilConfig, mil, "mil"), n_classes)

    root = Path(__file__).resolve().parents[1]
    demo = yaml.safe_load((root / "config/config.yaml").read_text())["mil"]
    runs(demo)
    zoo = yaml.safe_load((root / "config/zoo.yaml").read_text())["mil"]
    bench = yaml.safe_load((root / "config/benchmark.yaml").read_text())["mil"]
    models = {**demo["models"], **zoo["models"]}  # Snakemake merges nested dicts
    merged = {**demo, "models": {m: {**block, **bench["models"].get(m, {})} for m, block in models.items()}}
    assert {"srmil", "transmil", "clam_mb", "max"} <= {r.model for r in runs(merged).values()}
    listed = runs({"models": ["mean", "abmil"], "epochs": 3})  # a list: defaults
    assert listed["abmil"].params() == {"epochs": 3, "lr": MilConfig.lr, "weight_decay": MilConfig.weight_decay,
                                        "mirank": False, "mirank_k": 10, "mirank_weight": 0.1, "device": "auto",
                                        "model": "abmil"}  # the mil rule's --params: every training key

    base = {"epochs": 2, "lr": 1e-3}
    p = run_params({**base, "models": {"plain": {"model": "srmil", "w_gen": 0, "lr": 5e-4}}}, "plain")
    assert {k: p[k] for k in ("epochs", "lr", "w_gen", "model")} == {"epochs": 2, "lr": 5e-4, "w_gen": 0, "model": "srmil"}
    bad = [({"nope": {}}, "unknown model 'nope'"),
           ({"abmil": {"hiden": 8}}, r"abmil: unknown keys \['hiden'\]"),
           ({"abmil": {"mirank": True}}, "mirank needs instance logits")]
    for models, match in bad:
        with pytest.raises(ValueError, match=match):
            runs({**base, "models": models})
    with pytest.raises(ValueError, match=r"config mil: unknown keys \['hidden'\]"):
        runs({**base, "hidden": 8, "models": ["mean"]})  # model parameters at the top level
    with pytest.raises(ValueError, match="two classes"):
        runs({"models": {"dsmil": {"mirank": True}}}, n_classes=3)
    # values only the constructor can judge fail at the start of the job, naming the config key
    with pytest.raises(ValueError, match="mil.models.srmil: .*multiple of heads"):
        check_model_values("srmil", "srmil", {"hidden": 30, "heads": 4}, 2)
    with pytest.raises(ValueError, match="mil.models.x"):
        check_model_values("x", "transmil", {"heads": 3}, 2)


def test_mil_grid_limits_a_run_to_its_encoders_without_changing_its_params():
    from slidemil.config import MilConfig, from_block
    from slidemil.mil.params import mil_grid, mil_runs

    encoders = ["rand", "simclr", "weaksupcon"]
    mil = {"epochs": 2, "models": {"abmil": {}, "transmil": {"encoders": ["weaksupcon", "rand"]}}}
    assert mil_grid(mil, encoders) == {"abmil": encoders, "transmil": ["rand", "weaksupcon"]}
    # the encoder list is not a training parameter: editing it must not rerun the run's jobs
    runs = mil_runs(from_block(MilConfig, mil, "mil"), 2)
    alone = mil_runs(from_block(MilConfig, {"epochs": 2, "models": {"transmil": {}}}, "mil"), 2)
    assert runs["transmil"].params() == alone["transmil"].params()
    with pytest.raises(ValueError, match=r"transmil.encoders: \['dino'\] are not encoders"):
        mil_grid({"models": {"transmil": {"encoders": ["dino"]}}}, encoders)
    with pytest.raises(ValueError, match="a list of encoder names"):
        mil_grid({"models": {"transmil": {"encoders": "rand"}}}, encoders)


def test_dsmil_with_mirank_trains_on_positive_negative_pairs(monkeypatch):
    import slidemil.mil.loop as loop

    bags, labels, roles = make_bags(4, n_train=10, n_val=4, n_test=4)
    seen = []
    real = loop.epoch_steps

    def spy(*args):
        steps = real(*args)
        seen.append(steps)
        return steps

    monkeypatch.setattr(loop, "epoch_steps", spy)
    res = train_mil(bags, labels, roles, "dsmil", 2, {"epochs": 2, "lr": 1e-3, "mirank": True}, seed=0)
    assert len(seen) == 2 and all(len(s) == 5 for s in seen)  # min(#pos, #neg) pairs per epoch
    assert all(labels[a] == 1 and labels[b] == 0 for steps in seen for a, b in steps)
    assert np.isfinite([h["train_loss"] for h in res.history]).all()
    with pytest.raises(ValueError, match="instance logits"):
        train_mil(bags, labels, roles, "abmil", 2, {"epochs": 1, "mirank": True}, seed=0)


def test_run_fold_streams_bags_with_graphs_for_srmil(tmp_path):
    """SRMIL through run_fold: grid from the stores, the workflow's radius-1 graphs, a 0 MB cache (every
    bag re-read each epoch) predicts exactly as the all-in-memory cache."""
    from slidemil.slides.graph import save_graph
    from slidemil.mil.data import FeatureStoreBags

    bags, labels, _ = make_bags(1, n_train=12, n_val=0, n_test=0, d=8)
    classes = ["normal", "tumor"]
    features, graphs = tmp_path / "features", tmp_path / "graphs"
    rows = []
    for i, (sid, x) in enumerate(sorted(bags.items())):
        grid = np.stack([np.arange(len(x)) % 12, np.arange(len(x)) // 12], 1)
        write_features(features / f"{sid}.zarr", x, grid * 256, grid, {"encoder": "enc"})
        save_graph(graphs / f"{sid}.npz", grid, radius=1)
        rows.append({"slide_id": sid, "patient_id": f"p{i}", "label": classes[labels[sid]]})
    pd.DataFrame(rows).to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    fold_table(pd.DataFrame(rows), n_folds=3, seed=0, val_fraction=0.25).to_csv(tmp_path / "folds.csv", index=False)
    store = FeatureStoreBags(features, sorted(bags), graphs, cache_mb=0)
    first = sorted(bags)[0]
    assert store[first].graph_radius == 1 and not store.cache  # read, not kept
    np.testing.assert_array_equal(store[first].features, bags[first].astype(np.float16))

    params = {"epochs": 2, "hidden": 8, "heads": 2, "cls_hidden": 8}
    preds = []
    for cache_mb in (0, 100):
        out = tmp_path / f"srmil{cache_mb}"
        run_fold(features, tmp_path / "folds.csv", tmp_path / "samples.tsv", 0, "srmil", params, out, seed=0,
                 classes=classes, graphs_dir=graphs, cache_mb=cache_mb)
        preds.append(pd.read_csv(out / "predictions.csv"))
    pd.testing.assert_frame_equal(preds[0], preds[1])
    net, cfg = load_mil(tmp_path / "srmil0" / "model.pt")
    assert cfg["model"] == "srmil" and cfg["model_params"] == {"hidden": 8, "heads": 2, "cls_hidden": 8}
