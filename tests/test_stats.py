"""Bootstrap CIs, paired AUC tests and the validation threshold on hand-made cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from slidemil.evaluate.metrics import auc
from slidemil.evaluate.stats import (auc_ci, bootstrap_auc, delong_test, paired_auc_bootstrap, seed_mean_auc,
                            stratified_bootstrap_indices, youden_threshold)

Y4 = np.array([0, 0, 1, 1])
A4 = np.array([0.1, 0.6, 0.4, 0.8])  # AUC 3/4
PERFECT4 = np.array([0.1, 0.2, 0.8, 0.9])


def _perfect_and_random(n: int = 100, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    return y, y + 0.1 * rng.random(n), rng.random(n)


def test_stratified_resamples_keep_class_counts():
    y = np.array([0] * 7 + [1] * 3)
    idx = stratified_bootstrap_indices(y, 200, seed=0)
    assert idx.shape == (200, 10)
    assert (y[idx].sum(1) == 3).all()  # every resample: 3 positives drawn from the positives
    assert len({tuple(r) for r in idx}) > 150  # and they differ
    np.testing.assert_array_equal(idx, stratified_bootstrap_indices(y, 200, seed=0))


def test_auc_ci_contains_point_and_is_nan_for_one_class():
    y, _, rand = _perfect_and_random()
    lo, hi = auc_ci(y, rand, n_boot=500, seed=0)
    assert lo < 0.5312 < hi and 0.15 < hi - lo < 0.35
    assert auc_ci(y, y.astype(float), n_boot=100) == (1.0, 1.0)
    assert all(math.isnan(v) for v in auc_ci(np.ones(6), np.linspace(0, 1, 6), n_boot=50))


def test_delong_hand_case():
    """Structural components by hand: A's V10 = [1/2, 1], V01 = [1, 1/2] -> var(AUC_A) = 1/8;
    B is perfect (zero variance, zero covariance) -> var(diff) = 1/8, z = -0.25 / sqrt(1/8)."""
    r = delong_test(Y4, A4, PERFECT4)
    assert r["auc_a"] == pytest.approx(0.75) and r["auc_b"] == pytest.approx(1.0)
    assert r["se"] == pytest.approx(math.sqrt(1 / 8))
    assert r["z"] == pytest.approx(-0.25 / math.sqrt(1 / 8))
    assert r["p"] == pytest.approx(2 * norm.sf(0.25 / math.sqrt(1 / 8)))  # 0.4795
    assert r["p"] == pytest.approx(0.4795, abs=1e-4)


def test_delong_matches_the_definition_with_ties():
    """Midrank components equal the O(m n) definition psi(x, y) = 1, 1/2, 0."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 40)
    a, b = np.round(rng.random(40) + 0.3 * y, 1), np.round(rng.random(40), 1)  # many ties
    pos, neg = y == 1, y == 0

    def components(s):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        return psi.mean(), psi.mean(1), psi.mean(0)

    (auc_a, v10a, v01a), (auc_b, v10b, v01b) = components(a), components(b)
    s = np.cov(np.stack([v10a, v10b])) / pos.sum() + np.cov(np.stack([v01a, v01b])) / neg.sum()
    se = math.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    r = delong_test(y, a, b)
    assert r["auc_a"] == pytest.approx(auc_a) and r["auc_b"] == pytest.approx(auc_b)
    assert r["se"] == pytest.approx(se)
    assert r["p"] == pytest.approx(2 * norm.sf(abs(auc_a - auc_b) / se))


def test_perfect_beats_random_both_tests():
    y, perfect, rand = _perfect_and_random()
    boot = paired_auc_bootstrap(y, perfect, rand, n_boot=1000, seed=0)
    assert boot["auc_a"] == 1.0 and boot["diff"] == pytest.approx(1.0 - boot["auc_b"])
    assert 0 < boot["ci_lo"] < 0.5 < boot["ci_hi"] < 1  # covers the true gain (random AUC 0.5)
    assert boot["ci_lo"] < boot["diff"] < boot["ci_hi"]
    assert boot["p"] == pytest.approx(2 / 1001)  # no resample with diff <= 0: the floor
    assert delong_test(y, perfect, rand)["p"] < 1e-6
    # Swapping A and B flips the difference and its CI, and keeps the p-value.
    rev = paired_auc_bootstrap(y, rand, perfect, n_boot=1000, seed=0)
    assert rev["diff"] == pytest.approx(-boot["diff"])
    assert (rev["ci_lo"], rev["ci_hi"]) == pytest.approx((-boot["ci_hi"], -boot["ci_lo"]))
    assert rev["p"] == boot["p"]


def test_identical_predictions_diff_zero_p_one():
    y, _, rand = _perfect_and_random()
    boot = paired_auc_bootstrap(y, rand, rand, n_boot=300, seed=1)
    assert boot["diff"] == 0 and (boot["ci_lo"], boot["ci_hi"]) == (0, 0) and boot["p"] == 1.0
    assert delong_test(y, rand, rand)["p"] == 1.0
    # A monotone transform ranks the slides identically: same AUC, same verdict.
    assert paired_auc_bootstrap(y, rand, rand ** 3, n_boot=100)["p"] == 1.0


def test_similar_methods_are_not_significant():
    """Two noisy scores of the same signal: the CI covers 0 and p is large, in both tests."""
    rng = np.random.default_rng(5)
    y = np.repeat([0, 1], 40)
    signal = y + rng.standard_normal(80)
    a, b = signal + 0.3 * rng.standard_normal(80), signal + 0.3 * rng.standard_normal(80)
    boot = paired_auc_bootstrap(y, a, b, n_boot=1000, seed=0)
    assert boot["ci_lo"] < 0 < boot["ci_hi"] and boot["p"] > 0.2
    assert delong_test(y, a, b)["p"] > 0.2


def test_paired_multiclass_and_one_class():
    y = np.repeat(np.arange(3), 10)
    good = np.eye(3)[y] * 0.8 + 0.1
    flat = np.full((30, 3), 1 / 3)
    r = paired_auc_bootstrap(y, good[None], flat[None], n_boot=200)  # [S=1, N, C]
    assert r["auc_a"] == 1.0 and r["auc_b"] == 0.5 and r["ci_lo"] == pytest.approx(0.5)
    r = paired_auc_bootstrap(np.ones(5), np.arange(5.0), np.arange(5.0), n_boot=50)
    assert math.isnan(r["diff"]) and math.isnan(r["p"])
    with pytest.raises(ValueError, match="N = 30 slides"):
        paired_auc_bootstrap(y, good[None], flat[None, :5])
    with pytest.raises(ValueError, match="N = 30 slides"):  # [N, C] without the seed axis is refused
        paired_auc_bootstrap(y, good, flat)


def test_seed_mean_auc_is_not_the_ensemble():
    """Two seeds, AUC 3/4 and 1: the method's AUC is 7/8, whatever averaging the scores would give."""
    assert seed_mean_auc(Y4, np.stack([A4, PERFECT4])) == pytest.approx(0.875)
    assert seed_mean_auc(Y4, A4) == pytest.approx(0.75)
    # Two seeds that each rank one pair wrongly but average to a perfect ranking.
    s1, s2 = np.array([0.1, 0.5, 0.4, 0.9]), np.array([0.5, 0.1, 0.9, 0.4])
    assert seed_mean_auc(Y4, np.stack([s1, s2])) == pytest.approx(0.75)
    assert auc(Y4, (s1 + s2) / 2) == pytest.approx(1.0)


def test_vectorised_bootstrap_equals_ranking_each_resample():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 60)
    probs = np.round(rng.random((3, 60)) + 0.4 * y, 1)  # three seeds, many ties
    idx = stratified_bootstrap_indices(y, 50, seed=4)
    expected = [np.mean([auc(y[i], p[i]) for p in probs]) for i in idx]
    np.testing.assert_allclose(bootstrap_auc(y, probs, idx), expected, atol=1e-12)
    # all-ones counts: the point estimate
    assert bootstrap_auc(y, probs, np.arange(60)[None])[0] == pytest.approx(seed_mean_auc(y, probs))


def test_delong_with_seeds_averages_components():
    rng = np.random.default_rng(8)
    y = np.repeat([0, 1], 15)
    a = rng.random((2, 30)) + 0.5 * y
    b = rng.random((3, 30)) + 0.2 * y
    pos, neg = y == 1, y == 0

    def components(scores):
        psi = [(s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :]) for s in scores]
        psi = np.mean(psi, axis=0)
        return psi.mean(), psi.mean(1), psi.mean(0)

    (auc_a, v10a, v01a), (auc_b, v10b, v01b) = components(a), components(b)
    cov = np.cov(np.stack([v10a, v10b])) / 15 + np.cov(np.stack([v01a, v01b])) / 15
    r = delong_test(y, a, b)
    assert r["auc_a"] == pytest.approx(seed_mean_auc(y, a)) and r["auc_b"] == pytest.approx(seed_mean_auc(y, b))
    assert r["se"] == pytest.approx(math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]))
    # the same scores repeated over seeds change nothing
    single = delong_test(y, a[0], b[0])
    assert delong_test(y, np.stack([a[0]] * 3), b[0])["p"] == pytest.approx(single["p"])


def test_youden_threshold():
    assert youden_threshold(Y4, PERFECT4) == (pytest.approx(0.5), "youden")  # midpoint of the gap
    # J ties at 0.2 and 0.7 (J = 1/2 each): the one nearer 0.5 wins.
    assert youden_threshold(np.array([0, 1, 0, 1]), np.array([0.1, 0.3, 0.6, 0.8])) == (pytest.approx(0.7), "youden")
    # Separable only at a low threshold: the validation slides move it away from 0.5.
    t, src = youden_threshold(np.array([0, 0, 0, 1, 1]), np.array([0.01, 0.02, 0.05, 0.2, 0.3]))
    assert src == "youden" and t == pytest.approx(0.125)
    # No evidence: one class, or a ranking no threshold beats chance with.
    assert youden_threshold(np.ones(4), np.arange(4.0)) == (0.5, "default")
    assert youden_threshold(Y4, PERFECT4[::-1]) == (0.5, "default")
    assert youden_threshold(np.array([], int), np.array([])) == (0.5, "default")
