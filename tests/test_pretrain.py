"""Pretraining: every objective trains, a killed run resumes to the same weights, labels never leak."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from slidemil.cli import main as cli_main
from slidemil.encoders import EncoderSpec, build_encoder, read_state_dict
from slidemil.slides.graph import save_graph
from slidemil.plan.catalogue import scopes_of
from slidemil.ssl.pretrain import PretrainParams, pretrain, sources_for_scope, training_slides
from slidemil.ssl.data import SlideSource
from slidemil.ssl.losses import OBJECTIVES
from slidemil.slides.store import atomic_dir, create_tile_arrays, write_index_arrays

TINY = dict(backbone="resnet18", depth=1, input_size=16, batch_size=4, tiles_per_epoch=8, epochs=2, lr=0.05,
            workers=0, head={"hidden": 16, "out": 8}, precision="fp32")


def _slide(tmp_path, sid, seed, n=12, size=16):
    rng = np.random.default_rng(seed)
    grid = np.array([(i % 4, i // 4) for i in range(n)])
    path = tmp_path / "tiles" / f"{sid}.zarr"
    with atomic_dir(path) as tmp:
        g = zarr.open_group(tmp, mode="w", zarr_format=3)
        create_tile_arrays(g, n, size, shard_tiles=8)[:] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        write_index_arrays(g, grid * size, grid)
        g.attrs.update({"slide_id": sid, "status": "ok"})
    save_graph(tmp_path / "graphs" / f"{sid}.npz", grid, 1)
    return str(path), str(tmp_path / "graphs" / f"{sid}.npz")


def _weights(path):
    return read_state_dict(path)


@pytest.fixture
def cohort(tmp_path):
    """6 slides: s0-s3 train (2 negative, 2 positive), s4 val, s5 test; fold 0."""
    tiles, graphs = zip(*[_slide(tmp_path, f"s{i}", i) for i in range(6)])
    labels = {"s0": 0, "s1": 1, "s2": 0, "s3": 1, "s4": 1, "s5": 0}
    roles = ["train"] * 4 + ["val", "test"]
    pd.DataFrame({"slide_id": [f"s{i}" for i in range(6)], "fold": 0, "role": roles}).to_csv(tmp_path / "folds.csv",
                                                                                               index=False)
    return list(tiles), list(graphs), labels, tmp_path


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_every_objective_trains_and_writes_an_encoder(objective, cohort, tmp_path):
    tiles, graphs, labels, root = cohort
    params = PretrainParams(objective=objective, sampler="mixed", epochs=1, **{k: v for k, v in TINY.items()
                                                                                if k != "epochs"})
    uses_labels = OBJECTIVES[objective].uses_labels
    scope = scopes_of(params, 1, uses_labels)[0]
    src = sources_for_scope(tiles, graphs, scope, labels if uses_labels else None, str(root / "folds.csv"))
    meta = pretrain(src, params, tmp_path / "enc" / objective / "encoder.pt", seed=0, device="cpu")
    assert np.isfinite(meta["history"][0]["loss"])
    assert (scope == "fold0") == OBJECTIVES[objective].uses_labels
    # the output loads as an encoder of the benchmark (our own format, through the registry's loader)
    net = build_encoder(EncoderSpec(objective, arch="resnet18", depth=1,
                                    weights=str(tmp_path / "enc" / objective / "encoder.pt")), seed=99)
    assert net(torch.zeros(2, 3, 16, 16)).shape == (2, 64)


def test_killed_run_resumes_to_the_same_weights(cohort, tmp_path):
    tiles, graphs, _, _ = cohort
    src = [SlideSource(f"s{i}", t, g) for i, (t, g) in enumerate(zip(tiles, graphs))]
    params = PretrainParams(objective="simclr", sampler="spatial", **{**TINY, "epochs": 3})
    pretrain(src, params, tmp_path / "a" / "encoder.pt", seed=1, device="cpu")

    def die(epoch):
        if epoch == 1:
            raise KeyboardInterrupt("preempted")

    with pytest.raises(KeyboardInterrupt):
        pretrain(src, params, tmp_path / "b" / "encoder.pt", seed=1, device="cpu", on_epoch_end=die)
    assert not (tmp_path / "b" / "encoder.pt").exists()
    seen = []
    meta = pretrain(src, params, tmp_path / "b" / "encoder.pt", seed=1, device="cpu", on_epoch_end=seen.append)
    assert seen == [2]  # epochs 0 and 1 came from the checkpoint
    a, b = _weights(tmp_path / "a" / "encoder.pt"), _weights(tmp_path / "b" / "encoder.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(meta["history"]) == 3
    # a checkpoint of other params is not resumed
    other = PretrainParams(objective="simclr", sampler="augment", **{**TINY, "epochs": 3})
    seen.clear()
    pretrain(src, other, tmp_path / "b" / "encoder.pt", seed=1, device="cpu", on_epoch_end=seen.append)
    assert seen == [0, 1, 2]


def test_test_slide_labels_never_reach_a_fold_encoder(cohort, tmp_path):
    tiles, graphs, labels, root = cohort
    params = PretrainParams(objective="weaksupcon", sampler="augment", **TINY)
    folds = str(root / "folds.csv")
    assert training_slides(folds, 0) == ["s0", "s1", "s2", "s3"]

    def run(lab, name):
        src = sources_for_scope(tiles, graphs, "fold0", lab, folds)
        pretrain(src, params, tmp_path / name / "encoder.pt", seed=0, device="cpu")
        return _weights(tmp_path / name / "encoder.pt"), [s.slide_id for s in src]

    base, slides = run(labels, "base")
    assert slides == ["s0", "s1", "s2", "s3"]  # validation and test slides are not trained on
    flipped_test, _ = run({**labels, "s5": 1, "s4": 0}, "flip_test")
    assert all(torch.equal(base[k], flipped_test[k]) for k in base)
    flipped_train, _ = run({**labels, "s1": 0, "s0": 1}, "flip_train")  # the test can fail: train labels matter
    assert any(not torch.equal(base[k], flipped_train[k]) for k in base)


def test_label_objectives_are_never_trained_on_the_whole_cohort():
    with pytest.raises(ValueError, match="per fold"):
        scopes_of(PretrainParams(objective="weaksupcon", scope="all"), 4, uses_labels=True)
    assert scopes_of(PretrainParams(objective="supcon"), 3, uses_labels=True) == ["fold0", "fold1", "fold2"]
    assert scopes_of(PretrainParams(objective="byol"), 3, uses_labels=False) == ["all"]
    assert scopes_of(PretrainParams(objective="byol", scope="folds"), 2, uses_labels=False) == ["fold0", "fold1"]
    with pytest.raises(ValueError, match=r"config pretrain: unknown keys \['objectiv'\]"):
        PretrainParams.from_dict({"objectiv": "simclr"})


def test_cli_pretrain_fold_scope(cohort, tmp_path):
    tiles, graphs, labels, root = cohort
    sheet = pd.DataFrame({"slide_id": list(labels), "path": "x", "patient_id": list(labels),
                          "label": ["normal" if v == 0 else "tumour" for v in labels.values()]})
    sheet.to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    params = {"objective": "weaksupcon", **{**TINY, "epochs": 1}}
    out = tmp_path / "encoders" / "wsc" / "fold0" / "encoder.pt"
    rc = cli_main(["pretrain", "--params", json.dumps(params), "--scope", "fold0", "--tiles-dir", str(root / "tiles"),
                   "--graphs-dir", str(root / "graphs"), "--folds", str(root / "folds.csv"), "--samples", str(tmp_path / "samples.tsv"),
                   "--classes", json.dumps(["normal", "tumour"]), "--device", "cpu", "--out", str(out)])
    assert rc == 0
    meta = torch.load(out, weights_only=False)
    assert meta["format"] == "slidemil-encoder" and meta["slides"] == ["s0", "s1", "s2", "s3"]
