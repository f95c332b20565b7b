"""Every MIL model: shapes and ranges, tiny-bag overfitting, permutation invariance, a 1-tile bag and
a 50,000-tile bag on CPU; SRMIL's reduction to a plain GAT + supernode classifier (CPU, seconds)."""

from __future__ import annotations

import math
import resource

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from slidemil.mil.bag import Bag
from slidemil.mil.models import MIL_MODELS, build_mil
from slidemil.mil.models.srmil import SRMIL, sce_loss, srmil_loss
from slidemil.mil.models.transmil import canvas_positions

D = 12
# Small widths so that every test runs in seconds; dropout off where a test compares numbers.
SMALL = {
    "mean": {"hidden": 16, "dropout": 0.0},
    "max": {"hidden": 16, "dropout": 0.0},
    "abmil": {"hidden": 16, "dropout": 0.0},
    "clam_sb": {"hidden": 16, "attn_dim": 8, "dropout": 0.0, "k_sample": 3},
    "clam_mb": {"hidden": 16, "attn_dim": 8, "dropout": 0.0, "k_sample": 3},
    "dsmil": {"dropout": 0.0, "query_dim": 8},
    "transmil": {"hidden": 16, "heads": 2, "landmarks": 4, "dropout": 0.0},
    "srmil": {"hidden": 16, "heads": 2, "feat_drop": 0.0, "attn_drop": 0.0, "cls_hidden": 8, "cls_drop": 0.0},
}
MODELS = sorted(SMALL)
ATTENTION = {"abmil", "clam_sb", "clam_mb", "srmil"}  # instance scores are a distribution over tiles


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def grid_bag(n: int, d: int = D, seed: int = 0, width: int = 9) -> Bag:
    """n tiles on a raster of `width` columns, random features."""
    g = torch.Generator().manual_seed(seed)
    grid = np.stack([np.arange(n) % width, np.arange(n) // width], 1)
    return Bag(torch.randn(n, d, generator=g), coords=grid * 256, grid=grid)


def make(name: str, n_classes: int = 2, seed: int = 0, **over) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_mil(name, D, n_classes, **{**SMALL[name], **over})


def test_every_registered_model_is_tested():
    assert set(MIL_MODELS) == set(SMALL)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("n_classes", [2, 3])
def test_shapes_ranges_and_loss(name, n_classes):
    bag = grid_bag(40)
    net = make(name, n_classes).train()
    out = net(bag)
    loss = net.loss(out, torch.tensor(n_classes - 1))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() >= 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    net.eval()
    with torch.no_grad():
        logits, scores = net(bag)
    assert logits.shape == (n_classes,) and torch.isfinite(logits).all()
    assert scores.shape == (40,) and torch.isfinite(scores).all()
    if name in ATTENTION:
        assert (scores >= 0).all() and scores.sum().item() == pytest.approx(1.0, abs=1e-5)
    if MIL_MODELS[name].has_instance_logits:
        assert net(bag).instance_logits.shape == (40,)


@pytest.mark.parametrize("name", MODELS)
def test_one_tile_bag(name):
    bag = grid_bag(1)
    net = make(name).train()
    out = net(bag)
    loss = net.loss(out, torch.tensor(1))
    assert torch.isfinite(loss), name  # SRMIL: no masked tile -> SCE 0, not the authors' NaN
    loss.backward()
    net.eval()
    logits, scores = net(bag)
    assert logits.shape == (2,) and scores.shape == (1,)


@pytest.mark.parametrize("name", MODELS)
def test_permutation_invariance(name):
    """Permuting the tiles (with their grid positions) permutes the scores and keeps the logits."""
    bag = grid_bag(30, seed=1)
    perm = np.random.default_rng(0).permutation(30)
    shuffled = Bag(bag.features[perm], coords=bag.coords[perm], grid=bag.grid[perm])
    net = make(name).eval()
    with torch.no_grad():
        a, b = net(bag), net(shuffled)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.instance_scores[perm], b.instance_scores, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_overfits_two_tiny_bags(name):
    """A negative bag and a positive bag hiding 2 shifted tiles: 60 steps separate them."""
    neg, pos = grid_bag(20, seed=2), grid_bag(20, seed=3)
    pos.features[[3, 11], 0] += 4.0
    net = make(name)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    for _ in range(60):
        for bag, y in ((neg, 0), (pos, 1)):
            net.train()
            loss = net.loss(net(bag), torch.tensor(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        p_neg, p_pos = (torch.softmax(net(b).logits, 0)[1].item() for b in (neg, pos))
    assert p_neg < 0.5 < p_pos, (name, p_neg, p_pos)


@pytest.mark.parametrize("name", MODELS)
def test_bag_of_50000_tiles_on_cpu(name):
    """A training step and a prediction on 50,000 tiles: memory linear in N (Nystrom attention in
    TransMIL, chunked edge aggregation in SRMIL's GAT, no N x N matrix anywhere)."""
    n = 50_000
    bag = grid_bag(n, d=8, width=250)
    torch.manual_seed(0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    net = build_mil(name, 8, 2, **SMALL[name]).train()
    net.loss(net(bag), torch.tensor(1)).backward()
    net.eval()
    with torch.no_grad():
        logits, scores = net(bag)
    assert torch.isfinite(logits).all() and scores.shape == (n,) and torch.isfinite(scores).all()
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 1500, f"{name}: peak RSS grew {grown_mb:.0f} MB"


def test_transmil_canvas_drops_empty_rows_and_falls_back_to_a_square():
    grid = np.array([[0, 0], [1, 0], [500, 0], [0, 900]])  # far-apart pieces: compacted to 2 x 3
    order, cells, h, w = canvas_positions(grid, 4)
    assert (h, w) == (2, 3) and sorted(cells.tolist()) == [0, 1, 2, 3]
    assert grid[order].tolist() == [[0, 0], [1, 0], [500, 0], [0, 900]]  # raster order: row, then column
    diagonal = np.stack([np.arange(20), np.arange(20)], 1)  # compacted 20 x 20 > 4N: square packing
    _, cells, h, w = canvas_positions(diagonal, 20)
    assert (h, w) == (5, 5) and cells.tolist() == list(range(20))


# --- SRMIL ---------------------------------------------------------------------------------------

def dense_gat_layer(layer, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    """GATConv by the textbook, on a dense adjacency adj[dst, src] (no dropout)."""
    n = x.shape[0]
    f = layer.fc(x).view(n, layer.heads, layer.out_dim)
    el, er = (f * layer.attn_l).sum(-1), (f * layer.attn_r).sum(-1)  # [N, H]
    e = F.leaky_relu(er[:, None, :] + el[None, :, :], 0.2)  # [dst, src, H]
    e = e.masked_fill(~adj[:, :, None], float("-inf"))
    a = torch.softmax(e, dim=1)
    out = torch.einsum("ijh,jhf->ihf", a, f).reshape(n, -1) + layer.bias
    if layer.res_fc is not None:
        out = out + layer.res_fc(x)
    if layer.norm is not None:
        out = layer.norm(out)
    return layer.activation(out) if layer.activation is not None else out


def test_srmil_without_reconstruction_or_masking_is_a_plain_gat_supernode_classifier():
    """w_gen = 0, mask_rate = 0: loss = (2 - 0)(1 CE + 1 CE) = 4 CE of a dense textbook GAT + supernode
    classifier with the same weights; the decoder gets no gradient."""
    n = 23
    bag = grid_bag(n, seed=4, width=5)
    torch.manual_seed(0)
    net = SRMIL(D, 2, **{**SMALL["srmil"], "w_gen": 0.0, "mask_rate": 0.0}).train()
    loss = net.loss(net(bag), torch.tensor(1))

    # Dense reference: Chebyshev-2 neighbours + self loops, supernode <-> every tile.
    g = torch.from_numpy(bag.grid)
    adj = torch.zeros(n + 1, n + 1, dtype=torch.bool)
    adj[:n, :n] = (g[:, None, :] - g[None, :, :]).abs().max(-1).values <= 2
    adj[n, :n] = adj[:n, n] = True
    h = net.reformer(torch.cat([bag.features, net.super_token]))
    for layer in net.encoder.layers:
        h = dense_gat_layer(layer, h, adj)
    z = h.view(n + 1, net.heads, net.head_dim).mean(1)
    ce = F.cross_entropy(net.classifier(z[-1])[None], torch.tensor([1]))
    torch.testing.assert_close(loss, 4 * ce, rtol=1e-5, atol=1e-6)

    loss.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in net.decoder.parameters())
    assert net.encoder.layers[0].fc.weight.grad.abs().max() > 0


@pytest.mark.parametrize("dense", [True, False])
def test_gat_layer_edge_and_dense_paths_match_the_textbook_and_each_other(monkeypatch, dense):
    """Small graphs take the masked-softmax path, big ones the chunked edge path: the same outputs,
    attention and gradients (eval mode), both equal to a textbook dense GAT."""
    import slidemil.mil.layers.gat as gat

    n = 40
    bag = grid_bag(n, seed=5, width=8)
    g = torch.from_numpy(bag.grid)
    adj = (g[:, None, :] - g[None, :, :]).abs().max(-1).values <= 2
    dst, src = torch.nonzero(adj, as_tuple=True)
    torch.manual_seed(1)
    layer = gat.GATConv(D, 8, 2, residual=True, activation=True, norm=True).eval()
    assert gat.use_dense(n, src, dst, 8)  # this graph is small enough for the dense path
    monkeypatch.setattr(gat, "use_dense", lambda *a: dense)
    x = bag.features.clone().requires_grad_()
    out, alpha = layer(x, torch.stack([src, dst]))
    torch.testing.assert_close(out, dense_gat_layer(layer, x, adj), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.zeros(n, 2).index_add(0, dst, alpha), torch.ones(n, 2))  # softmax per dst
    out.square().sum().backward()
    grads = [x.grad] + [p.grad for p in layer.parameters()]
    x_ref = bag.features.clone().requires_grad_()
    layer.zero_grad()
    dense_gat_layer(layer, x_ref, adj).square().sum().backward()
    for got, ref in zip(grads, [x_ref.grad] + [p.grad for p in layer.parameters()]):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_gat_dense_path_is_refused_for_big_graphs_and_repeated_edges():
    from slidemil.mil.layers.gat import use_dense

    src, dst = torch.arange(5), torch.arange(5)
    assert use_dense(5, src, dst, 8)
    assert not use_dense(5, torch.cat([src, src[:1]]), torch.cat([dst, dst[:1]]), 8)  # 0 -> 0 twice
    assert not use_dense(5000, torch.arange(5000), torch.arange(5000), 64)  # N^2 >> E * F


def test_srmil_checkpointing_gives_the_same_loss_and_gradients(monkeypatch):
    import slidemil.mil.models.srmil as srmil

    bag = grid_bag(30, seed=6, width=6)
    runs = []
    for min_tiles in (0, 10**9):  # checkpoint every bag / never
        monkeypatch.setattr(srmil, "CHECKPOINT_MIN_TILES", min_tiles)
        torch.manual_seed(0)
        net = SRMIL(D, 2, hidden=16, heads=2, cls_hidden=8).train()  # dropout and masking on
        loss = net.loss(net(bag), torch.tensor(1))
        loss.backward()
        runs.append((loss.detach(), [p.grad.clone() for p in net.parameters() if p.grad is not None]))
    torch.testing.assert_close(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(a, b)


def test_srmil_loss_by_hand():
    lm, lf = torch.tensor([0.0, 1.0]), torch.tensor([2.0, 0.0])
    x_rec, x_init = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    ce_m = math.log(1 + math.exp(-1.0))  # target 1
    ce_f = math.log(1 + math.exp(2.0))
    sce = (1.0 + 0.0) / 2  # cos = 0 and cos = 1
    got = srmil_loss(lm, lf, x_rec, x_init, torch.tensor(1))
    assert got.item() == pytest.approx(0.2 * ce_m + 0.2 * ce_f + 1.8 * sce, rel=1e-6)
    general = srmil_loss(lm, lf, x_rec, x_init, torch.tensor(1), w_gen=1.5, w_ce=0.5, alpha=2.0)
    assert general.item() == pytest.approx(0.5 * (1.5 * ce_m + 0.5 * ce_f) + 1.5 * (1.0 + 0.0) / 2, rel=1e-6)
    assert sce_loss(torch.zeros(0, 3), torch.zeros(0, 3)).item() == 0.0


def test_srmil_masks_seventy_percent_and_reconstructs_them():
    bag = grid_bag(20, seed=5)
    torch.manual_seed(0)
    out = SRMIL(D, 2, **SMALL["srmil"]).train()(bag)
    assert out.aux["x_rec"].shape == (14, D) and out.aux["x_init"].shape == (14, D)  # int(0.7 * 20)


def test_srmil_uses_the_workflow_graph_when_radius_matches_else_builds_radius_2():
    bag = grid_bag(20, seed=6, width=5)
    from slidemil.slides.graph import neighbour_graph

    r1 = neighbour_graph(bag.grid, 1)
    bag.graph, bag.graph_radius = r1, 1
    indptr, _ = bag.neighbours(2)
    assert indptr[-1] > r1[0][-1]  # rebuilt at radius 2 (more edges)
    bag.graph_radius = 2  # pretend the workflow built radius 2: it is used as is
    assert bag.neighbours(2) is bag.graph
    with pytest.raises(ValueError, match="grid"):
        SRMIL(D, 2)(Bag(torch.randn(4, D)))


def test_tune_heap_is_importable_before_torch_and_fixes_the_mmap_threshold():
    """slidemil.heap must not import torch (torch reads THP_MEM_ALLOC_ENABLE at its first allocation,
    so the `mil` command tunes the heap before importing it); glibc must take the threshold."""
    import os
    import subprocess
    import sys

    code = ("import os, sys; from slidemil.heap import tune_heap; ok = tune_heap(); "
            "print(ok, os.environ.get('THP_MEM_ALLOC_ENABLE'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["True", "1", "False"], out.stdout + out.stderr
