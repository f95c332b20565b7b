"""A new objective, pair sampler and MIL model need one registered class each and no other edit.

Registered here, in the test file only, and run through the pretrain and MIL stages' library entry
points; a fixture takes them out of the registries again so that no other test sees them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from slidemil.cohorts.folds import fold_table
from slidemil.mil.models import MIL_MODELS, MILModel, MilOutput, register_mil
from slidemil.mil.models.base import bag_features
from slidemil.mil.run import run_fold
from slidemil.slides.store import write_features
from slidemil.ssl.data import SlideSource
from slidemil.ssl.losses import OBJECTIVES, Objective, register_objective
from slidemil.ssl.pretrain import PretrainParams, pretrain
from slidemil.ssl.samplers import PAIR_SAMPLERS, PairSampler, register_sampler
from test_pretrain import TINY, _slide

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def toys():
    """Registers the three toy classes for one test; unregisters them afterwards."""

    @register_objective("toy_l2")
    class ToyL2(Objective):
        """Mean squared distance between the two views' normalised projections."""

        normalize = True

        def __init__(self, out_dim: int, weight: float = 1.0) -> None:  # out_dim: offered by the trainer
            super().__init__()
            self.out_dim, self.weight = out_dim, weight
            self.calls = 0

        def forward(self, z1, z2, labels=None, t1=None, t2=None):
            assert z1.shape[1] == self.out_dim
            self.calls += 1
            return self.weight * (z1 - z2).pow(2).sum(dim=1).mean()

    @register_sampler("toy_first_neighbour")
    class FirstNeighbour(PairSampler):
        """The anchor's first grid neighbour (itself when it has none)."""

        needs_graph = True

        def __init__(self, radius: int) -> None:  # no default: the pretrain entry's radius is offered
            self.radius = radius

        def partner(self, anchor, neighbours, rng):
            return (int(neighbours[0]), True) if len(neighbours) else (anchor, False)

    @register_mil("toy_mean_linear")
    class MeanLinear(MILModel):
        """Linear head on the bag's mean feature; instance scores: each instance's class-1 logit."""

        def __init__(self, in_dim: int, n_classes: int, scale: float = 1.0) -> None:
            super().__init__()
            self.head, self.scale = nn.Linear(in_dim, n_classes), scale

        def forward(self, x):
            inst = self.head(bag_features(x)) * self.scale
            return MilOutput(inst.mean(dim=0), inst[:, -1])

    yield ToyL2, FirstNeighbour, MeanLinear
    del OBJECTIVES["toy_l2"], PAIR_SAMPLERS["toy_first_neighbour"], MIL_MODELS["toy_mean_linear"]


def test_toy_objective_and_sampler_pretrain_an_encoder(toys, tmp_path):
    sources = [SlideSource(f"s{i}", *_slide(tmp_path, f"s{i}", i)) for i in range(2)]
    params = PretrainParams(objective="toy_l2", objective_args={"weight": 0.5}, sampler="toy_first_neighbour",
                            radius=1, **{**TINY, "epochs": 1})
    meta = pretrain(sources, params, tmp_path / "enc" / "encoder.pt", seed=0, device="cpu")
    assert (tmp_path / "enc" / "encoder.pt").is_file()
    history = meta["history"][0]
    assert np.isfinite(history["loss"]) and history["spatial_fraction"] == 1.0  # every tile has a neighbour


def test_toy_mil_model_trains_on_a_fold(toys, tmp_path):
    rng = np.random.default_rng(0)
    classes, features, rows = ["normal", "tumor"], tmp_path / "features" / "enc", []
    for i in range(12):
        n = int(rng.integers(5, 20))
        grid = np.stack([np.arange(n) % 4, np.arange(n) // 4], 1)
        write_features(features / f"s{i}.zarr", rng.standard_normal((n, 8)) + i % 2, grid * 256, grid, {})
        rows.append({"slide_id": f"s{i}", "patient_id": f"p{i}", "label": classes[i % 2]})
    samples = pd.DataFrame(rows)
    samples.to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    folds = fold_table(samples, n_folds=3, seed=0, val_fraction=0.25)
    folds.to_csv(tmp_path / "folds.csv", index=False)
    out = tmp_path / "mil" / "fold0"
    run_fold(features, tmp_path / "folds.csv", tmp_path / "samples.tsv", 0, "toy_mean_linear",
             {"epochs": 2, "scale": 0.5}, out, seed=0, classes=classes)
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == int((folds["fold"] == 0).sum()) == 12
    assert torch.load(out / "model.pt", weights_only=False)["config"]["model"] == "toy_mean_linear"
