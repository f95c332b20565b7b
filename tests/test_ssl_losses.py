"""Objectives: values computed by hand on tiny cases, per-anchor loop references, and falling losses."""

import math

import pytest
import torch
import torch.nn.functional as F

from slidemil.ssl.losses import OBJECTIVES, build_objective
from slidemil.ssl.losses.barlow import barlow_twins_loss
from slidemil.ssl.losses.byol import byol_loss
from slidemil.ssl.losses.dino import dino_loss
from slidemil.ssl.losses.hnm_supcon import hnm_supcon
from slidemil.ssl.losses.simclr import nt_xent
from slidemil.ssl.losses.supcon import supcon
from slidemil.ssl.losses.vicreg import vicreg_loss
from slidemil.ssl.losses.weaksupcon import similarity_loss, weaksupcon

E1, E2 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_registry_names():
    assert {"simclr", "byol", "vicreg", "barlow", "dino", "supcon", "weaksupcon", "supcon_hnm"} <= set(OBJECTIVES)
    assert OBJECTIVES["weaksupcon"].uses_labels and not OBJECTIVES["simclr"].uses_labels
    with pytest.raises(KeyError, match="unknown objective"):
        build_objective("nope")
    with pytest.raises(TypeError, match=r"objective 'simclr' got unknown params \['temprature'\]"):
        build_objective("simclr", temprature=0.2)  # a config typo is an error, an offered value is not
    assert [name for name, cls in OBJECTIVES.items() if cls.keeps_teacher] == ["dino"]


def test_simclr_by_hand():
    # rows e1, e2, e1, e2: each anchor has its positive at s=1 and two others at s=0
    z1, z2 = torch.stack([E1, E2]), torch.stack([E1, E2])
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-6)
    # SupContrast's T / T_b scale
    assert nt_xent(z1, z2, 0.1, 0.07).item() == pytest.approx(0.1 / 0.07 * math.log(1 + 2 * math.exp(-10)), rel=1e-5)


def test_supcon_and_hnm_by_hand():
    # pairs: a, a (label 0), b (label 1); a = e1, b = e2; T = T_b = 1
    z = torch.stack([E1, E1, E2])
    labels = torch.tensor([0, 0, 1])
    e = math.e
    neg_anchor = math.log(3 * e + 2) - 1  # positives: 3 rows at s=1; denominator 3e + 2
    pos_anchor = math.log(4 + e) - 1  # positive: the other view; denominator 4 + e
    want = (4 * neg_anchor + 2 * pos_anchor) / 6
    assert supcon(z, z, labels, 1.0, 1.0).item() == pytest.approx(want, rel=1e-6)
    assert hnm_supcon(z, z, labels, temperature=1.0, base_temperature=1.0).item() == pytest.approx(want, rel=1e-6)
    # positives only among negatives: label-1 anchors have none and contribute 0 (still in the mean)
    assert hnm_supcon(z, z, labels, temperature=1.0, base_temperature=1.0,
                      pair_mode="negative").item() == pytest.approx(4 * neg_anchor / 6, rel=1e-6)
    assert hnm_supcon(z, z, labels, temperature=1.0, base_temperature=1.0,
                      pair_mode="positive").item() == pytest.approx(2 * pos_anchor / 6, rel=1e-6)


def test_weaksupcon_by_hand():
    # negatives e1, e2 (two views each): for each anchor the other 3 rows have 1 - s = 1, 0, 1
    z = torch.stack([E1, E2])
    assert similarity_loss(z, z, 0.1, 0.07).item() == pytest.approx((2 / 3) / 0.07, rel=1e-6)
    # two negative pairs and two positive pairs, interleaved: L = L_sim(neg) + (T/T_b) NT-Xent(pos)
    zz = torch.stack([E1, E1, E2, E2])
    labels = torch.tensor([0, 1, 0, 1])
    want = (2 / 3) / 0.07 + 0.1 / 0.07 * math.log(1 + 2 * math.exp(-10))
    assert weaksupcon(zz, zz, labels).item() == pytest.approx(want, rel=1e-6)
    # an empty group contributes 0 (the authors' code would give NaN)
    assert weaksupcon(z, z, torch.tensor([0, 0])).item() == pytest.approx((2 / 3) / 0.07, rel=1e-6)


def _ref_supcon(z1, z2, pos, t, tb, subtract_max=True, keep_col=None, eps_div=None):
    """Per-anchor loop over rows cat([z1, z2]); pos(i, j) says whether row j is a positive of row i."""
    rows = torch.cat([z1, z2]).double()
    n = len(rows)
    keep_col = keep_col or (lambda j: True)
    total = 0.0
    for i in range(n):
        s = [(rows[i] @ rows[j]).item() / t for j in range(n)]
        m = max(s) if subtract_max else 0.0
        den = sum(math.exp(s[j] - m) for j in range(n) if j != i and keep_col(j))
        ps = [j for j in range(n) if j != i and keep_col(j) and pos(i, j)]
        lp = [s[j] - m - math.log(den) for j in ps]
        if eps_div is not None:
            mean_lp = sum(lp) / (len(ps) + eps_div)
        else:
            mean_lp = sum(lp) / max(len(ps), 1)
        total += -(t / tb) * mean_lp
    return total / n


def test_contrastive_losses_match_loop_references_on_random_embeddings():
    b = 6
    z1, z2 = _unit(b, 8, seed=1), _unit(b, 8, seed=2)
    lab = torch.tensor([0, 1, 1, 0, 1, 0])
    bag = torch.tensor([0, 1, 1, 0, 1, 1])  # pair 5: a positive-slide tile with instance label 0
    pair = lambda i: i % b  # noqa: E731
    same_tile = lambda i, j: pair(i) == pair(j)  # noqa: E731
    same_label = lambda i, j: lab[pair(i)] == lab[pair(j)]  # noqa: E731
    assert nt_xent(z1, z2, 0.1, 0.07).item() == pytest.approx(_ref_supcon(z1, z2, same_tile, 0.1, 0.07), rel=1e-5)
    assert supcon(z1, z2, lab).item() == pytest.approx(_ref_supcon(z1, z2, same_label, 0.07, 0.07), rel=1e-5)
    # WeakSupCon = loop-L_sim over label-0 rows + loop NT-Xent over label-1 rows
    n, p = lab == 0, lab == 1
    r1, r2 = z1[n].double(), z2[n].double()
    rows = torch.cat([r1, r2])
    sims = [(rows[i] @ rows[j]).item() for i in range(len(rows)) for j in range(len(rows)) if i != j]
    l_sim = sum((1 - s) / 0.07 for s in sims) / len(sims)
    want = l_sim + _ref_supcon(z1[p], z2[p], lambda i, j: i % int(p.sum()) == j % int(p.sum()), 0.1, 0.07)
    assert weaksupcon(z1, z2, lab).item() == pytest.approx(want, rel=1e-5)
    # HNM: negatives-only positives, uncertain rows (bag 1, label 0) out of every denominator
    uncertain = lambda j: not (bag[pair(j)] == 1 and lab[pair(j)] == 0)  # noqa: E731
    neg_only = lambda i, j: lab[pair(i)] == 0 and lab[pair(j)] == 0  # noqa: E731
    want = _ref_supcon(z1, z2, neg_only, 0.07, 0.07, subtract_max=False, keep_col=uncertain, eps_div=1e-10)
    got = hnm_supcon(z1, z2, lab, bag, pair_mode="negative", mask_uncertain_neg=True)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_vicreg_by_hand():
    z1 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    # std of column 0 is sqrt(2) (no penalty), of column 1 sqrt(1e-4) = 0.01: (1 - 0.01) / 2 per view, /2 each
    assert vicreg_loss(z1, z1).item() == pytest.approx(25 * 0.495, rel=1e-5)
    # shifting view 2 by (0, 1) adds only the invariance term: MSE 0.5
    assert vicreg_loss(z1, z1 + torch.tensor([0.0, 1.0])).item() == pytest.approx(25 * 0.5 + 25 * 0.495, rel=1e-5)
    # correlated columns add the covariance term: C = [[2, 2], [2, 2]], offdiag^2 summed = 8, / D = 4, two views
    z = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    assert vicreg_loss(z, z).item() == pytest.approx(2 * 4.0, rel=1e-4)


def test_barlow_by_hand():
    z = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # standardised columns identical: c = all ones (eps aside)
    c = 1 / (1 + 1e-5)
    assert barlow_twins_loss(z, z).item() == pytest.approx(2 * (c - 1) ** 2 + 0.0051 * 2 * c ** 2, rel=1e-5)
    z2 = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])  # column 1 anti-correlated: c = [[1, -1], [1, -1]]
    assert barlow_twins_loss(z, z2).item() == pytest.approx((c - 1) ** 2 + (c + 1) ** 2 + 0.0051 * 2 * c ** 2,
                                                            rel=1e-5)


def test_byol_and_dino_by_hand():
    p = torch.stack([E1, E2])
    assert byol_loss(p, p, p, p).item() == pytest.approx(0.0, abs=1e-7)
    assert byol_loss(p, p, p.flip(0), p.flip(0)).item() == pytest.approx(4.0)  # orthogonal: 2 + 2 per sample
    # uniform student: cross-entropy log K whatever the teacher
    s = torch.zeros(2, 3)
    t = torch.randn(2, 3)
    assert dino_loss(s, s, t, t, torch.zeros(1, 3)).item() == pytest.approx(math.log(3), rel=1e-6)
    # a teacher sharpened to one prototype and a student at logit 1 there: -log softmax(1/0.1 on one)
    t = torch.tensor([[10.0, 0.0, 0.0]], dtype=torch.float64).repeat(2, 1)
    s = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64).repeat(2, 1)
    want = -math.log(math.exp(10) / (math.exp(10) + 2))
    assert dino_loss(s, s, t, t, torch.zeros(1, 3)).item() == pytest.approx(want, rel=1e-3)


def test_dino_centre_update():
    obj = build_objective("dino", offered={"out_dim": 3, "unused": 1})
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    obj.after_step(t, t)
    torch.testing.assert_close(obj.center, torch.tensor([[0.05, 0.05, 0.0]]))


@pytest.mark.parametrize("name", ["simclr", "supcon", "weaksupcon", "supcon_hnm", "vicreg", "barlow", "byol", "dino"])
def test_loss_falls_as_positives_align(name):
    b, d = 8, 16
    obj = build_objective(name, offered={"out_dim": d})  # as the trainer does: the head width to those that take it
    anchor = torch.randn(b, d, generator=torch.Generator().manual_seed(0))
    other = torch.randn(b, d, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1] * (b // 2))
    values = []
    for w in (0.0, 0.5, 0.9, 1.0):
        z2 = (1 - w) * other + w * anchor
        z1 = anchor
        if obj.normalize:
            z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        if name == "weaksupcon":  # negatives pulled together too: align them onto one direction
            mix = lambda z: torch.where((labels == 0)[:, None], (1 - w) * z + w * anchor[:1], z)  # noqa: E731
            z1, z2 = F.normalize(mix(anchor), dim=1), F.normalize(mix(z2), dim=1)
        if name in ("supcon", "supcon_hnm"):  # every same-label row is a positive: move rows onto a class prototype
            proto = anchor[:2][labels]
            z1 = F.normalize((1 - w) * anchor + w * proto, dim=1)
            z2 = F.normalize((1 - w) * other + w * proto, dim=1)
        kw = {"labels": labels} if obj.uses_labels else {}
        if obj.teacher:  # student/online outputs move onto the teacher's
            kw = {"t1": 0.4 * anchor, "t2": 0.4 * anchor}  # DINO: q = softmax(anchor / 0.1), the student's at w = 1
            z1 = z2
        values.append(obj(z1, z2, **kw).item())
    assert all(a > b for a, b in zip(values, values[1:])), values
