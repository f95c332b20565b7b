"""The losses the seed papers' code computes: MIRank + DSMIL pair loss (HNM-WSI), DSMIL's BCE
(dsmil-wsi), CLAM's instance clustering; checked by hand and against the authors' arithmetic."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from slidemil.mil.losses import MIRank, mirank_loss
from slidemil.mil.losses.mirank import pair_loss
from slidemil.mil.models import build_mil
from slidemil.mil.models.clam import clam_instance_loss
from slidemil.mil.models.dsmil import dsmil_bce


def test_mirank_by_hand():
    pos = torch.tensor([0.5, 3.0, -1.0, 2.0])
    neg = torch.tensor([1.0, -2.0, 4.0])
    # K = 2: mean top-2 pos = (3 + 2) / 2 = 2.5, neg = (4 + 1) / 2 = 2.5 -> relu(1 - 2.5 + 2.5) = 1
    assert mirank_loss(pos, neg, k=2).item() == pytest.approx(1.0)
    # K = 1: relu(1 - 3 + 4) = 2; a wide margin is met: relu(1 - 3 + (-2)) = 0 with neg = [-2]
    assert mirank_loss(pos, neg, k=1).item() == pytest.approx(2.0)
    assert mirank_loss(pos, torch.tensor([-2.0]), k=1).item() == 0.0
    # K = 10 > N: all tiles: pos mean 1.125, neg mean 1.0 -> relu(1 - 1.125 + 1) = 0.875
    assert MIRank()(pos, neg).item() == pytest.approx(0.875)
    # [N, 1] logits (the authors' DSMIL output) give the same
    assert mirank_loss(pos[:, None], neg[:, None], k=2).item() == pytest.approx(1.0)


def authors_pair_loss(pos_ins, pos_bag, neg_ins, neg_bag, k=10):
    """HNM-WSI train/utils.py epoch_train (ranking_loss=True), verbatim arithmetic, unweighted BCE."""
    criterion = nn.BCEWithLogitsLoss()
    pos_label, neg_label = torch.tensor(1.0), torch.tensor(0.0)
    pos_max, _ = torch.max(pos_ins, 0)
    neg_max, _ = torch.max(neg_ins, 0)
    _, pos_topk = torch.topk(pos_ins.view(-1), k)
    _, neg_topk = torch.topk(neg_ins.view(-1), k)
    ranking = F.relu(1 + torch.sum(neg_ins[neg_topk]) / k - torch.sum(pos_ins[pos_topk]) / k)
    pos_bag_loss = criterion(pos_bag.view(1, -1), pos_label.view(1, -1))
    pos_max_loss = criterion(pos_max.view(1, -1), pos_label.view(1, -1))
    neg_bag_loss = criterion(neg_bag.view(1, -1), neg_label.view(1, -1))
    neg_max_loss = criterion(neg_max.view(1, -1), neg_label.view(1, -1))
    return 0.5 * (pos_bag_loss + neg_bag_loss) / 2 + 0.5 * (pos_max_loss + neg_max_loss) / 2 + 0.1 * ranking


def test_dsmil_mirank_pair_loss_matches_the_authors_arithmetic():
    torch.manual_seed(0)
    net = build_mil("dsmil", 6, 2).train()
    pos, neg = torch.randn(30, 6) + 0.3, torch.randn(25, 6)
    out_p, out_n = net(pos), net(neg)
    ours = pair_loss(net.loss(out_p, torch.tensor(1)), net.loss(out_n, torch.tensor(0)),
                     out_p.instance_logits, out_n.instance_logits)
    theirs = authors_pair_loss(out_p.aux["inst"], out_p.aux["bag_logits"], out_n.aux["inst"], out_n.aux["bag_logits"])
    torch.testing.assert_close(ours, theirs)


def test_dsmil_binary_logits_are_zero_and_the_bag_logit():
    """softmax([0, z])[1] = sigmoid(z) and CE([0, z], y) = BCE(z, y): the C = 2 contract is the authors' BCE."""
    torch.manual_seed(1)
    out = build_mil("dsmil", 6, 2).eval()(torch.randn(9, 6))
    z = out.aux["bag_logits"]
    assert out.logits[0].item() == 0.0 and out.logits[1].item() == pytest.approx(z.item())
    for y in (0, 1):
        ce = F.cross_entropy(out.logits[None], torch.tensor([y]))
        torch.testing.assert_close(ce, F.binary_cross_entropy_with_logits(z, torch.tensor([float(y)])))
    # the loss: 0.5 BCE(bag) + 0.5 BCE(max instance)
    inst_max = out.aux["inst"].max()
    expect = 0.5 * F.softplus(-z).sum() + 0.5 * F.softplus(-inst_max)  # y = 1: BCE = softplus(-logit)
    torch.testing.assert_close(dsmil_bce(z, out.aux["inst"], torch.tensor(1), 2), expect)


def test_dsmil_critical_instance_is_the_top_instance_logit():
    torch.manual_seed(2)
    net = build_mil("dsmil", 4, 2).eval()
    x = torch.randn(12, 4)
    out = net(x)
    crit = int(out.instance_logits.argmax())
    f = net.lin(x)
    q, q_max = net.q(f), net.q(f[crit])
    attn = torch.softmax(q @ q_max / q.shape[1] ** 0.5, 0)
    torch.testing.assert_close(out.aux["attn"][:, 0], attn)


def test_clam_instance_loss_by_hand():
    """Binary, label 1: classifier 1 sees top-2 attended as 1 and bottom-2 as 0; classifier 0 is idle."""
    h = torch.eye(5)  # instance i = e_i
    attn = torch.tensor([[0.1, 0.4, 0.05, 0.3, 0.15]])
    clfs = nn.ModuleList([nn.Linear(5, 2), nn.Linear(5, 2)])
    got = clam_instance_loss(attn, h, clfs, target=1, k_sample=2, subtyping=False)
    logits = clfs[1](h[[1, 3, 2, 0]])  # top-2: 1, 3; bottom-2: 2, 0
    torch.testing.assert_close(got, F.cross_entropy(logits, torch.tensor([1, 1, 0, 0])))
    # subtyping: the other classifiers see the top-k of their own branch as negatives; mean over classes
    attn3 = torch.tensor([[0.1, 0.4, 0.05, 0.3, 0.15], [0.5, 0.1, 0.2, 0.1, 0.1], [0.2] * 5])
    clfs3 = nn.ModuleList([nn.Linear(5, 2) for _ in range(3)])
    got3 = clam_instance_loss(attn3, h, clfs3, target=0, k_sample=1, subtyping=True)
    in_class = F.cross_entropy(clfs3[0](h[[1, 2]]), torch.tensor([1, 0]))  # top-1: 1, bottom-1: 2
    out1 = F.cross_entropy(clfs3[1](h[[0]]), torch.tensor([0]))
    out2 = F.cross_entropy(clfs3[2](h[[int(torch.topk(attn3[2], 1).indices)]]), torch.tensor([0]))
    torch.testing.assert_close(got3, (in_class + out1 + out2) / 3)


def test_clam_loss_weighs_bag_and_instance_terms():
    torch.manual_seed(3)
    net = build_mil("clam_sb", 6, 2, hidden=8, attn_dim=4, dropout=0.0, k_sample=2).train()
    out = net(torch.randn(10, 6))
    bag = F.cross_entropy(out.logits[None], torch.tensor([1]))
    inst = clam_instance_loss(out.aux["attn"], out.aux["h"], net.instance_classifiers, 1, 2, False)
    torch.testing.assert_close(net.loss(out, torch.tensor(1)), 0.7 * bag + 0.3 * inst)
