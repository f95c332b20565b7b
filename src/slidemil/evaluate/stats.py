"""Confidence intervals, paired tests and thresholds for slide-level AUCs: pure functions.

Conventions. y: int [N] class indices (binary: 1 = positive). Scores carry a leading seed axis:
probs [S, N] (binary: positive-class score) or [S, N, C] (class probabilities; C > 2: one-vs-rest
macro AUC, slidemil.evaluate.metrics.auc); a 1-D [N] array is one seed. The AUC of a method is the mean
over seeds of each seed's AUC on the same slides (`seed_mean_auc`): what one training run
achieves on average, not the AUC of a seed ensemble (averaging probabilities first would reward
methods whose seeds disagree).

Bootstrap. Stratified: each resample draws the positives from the positives and the negatives
from the negatives (every class from itself, with replacement), so class counts are those of the
data, every resample has an AUC, and the CI reflects which slides were drawn. Paired: A and B,
and every seed of each, are scored on the same resampled slides, so what the slides share (easy
and hard cases) cancels in the difference. Percentile intervals. Binary AUCs of all resamples
are computed at once from the positive x negative comparison matrix and the resample counts.

Paired p-value. Two-sided, from the same paired bootstrap that gives the CI: p = 2 min(P*(d <= 0),
P*(d >= 0)) with the (count + 1) / (n_boot + 1) correction (never 0), capped at 1. It is about
the smallest alpha at which the percentile CI would exclude 0, so the two agree up to the
bootstrap's resolution, ~2 / n_boot (with 50 resamples, as in tiny test runs, a CI can just
exclude 0 at p ~ 0.1; with 1000 they differ by at most ~0.002). Verdicts read the CI. DeLong's test (DeLong et al. 1988, the fast midrank form of Sun & Xu
2014) is given beside it for binary tasks: the usual analytic test for two correlated AUCs, exact
to any resolution but relying on a normal approximation that is rough at n ~ 50 or AUC near 1.
With several seeds its structural components are averaged over seeds (the seed-mean AUC is a
U-statistic whose kernel is the seeds' mean).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm, rankdata

from slidemil.evaluate.metrics import auc


def with_seed_axis(probs: np.ndarray, n: int) -> np.ndarray:
    """[N] -> [1, N]; [S, N] and [S, N, C] kept; checks that N matches the n labels."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:
        p = p[None]
    if p.ndim not in (2, 3) or p.shape[1] != n:
        raise ValueError(f"scores must be [N], [S, N] or [S, N, C] with N = {n} slides, got shape {p.shape}")
    if p.ndim == 3 and p.shape[2] <= 2:  # two-column probabilities: the positive class's column
        p = p[:, :, -1]
    return p


def seed_mean_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean over seeds of the AUC of probs[s] ([S, N] or [S, N, C]; [N] = one seed)."""
    y = np.asarray(y).astype(int).ravel()
    p = with_seed_axis(probs, len(y))
    values = [auc(y, ps) for ps in p]
    return float(np.mean(values)) if values else float("nan")


def stratified_bootstrap_indices(y: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """int [n_boot, N]: row b resamples each class's slides from that class, with replacement.

    Column order is sorted by class (all class-0 draws, then class-1 draws, ...): only the
    multiset of drawn slides matters for AUC-type statistics.
    """
    y = np.asarray(y).astype(int).ravel()
    rng = np.random.default_rng(seed)
    parts = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        parts.append(members[rng.integers(0, members.size, size=(n_boot, members.size))])
    if not parts:
        return np.zeros((n_boot, 0), dtype=int)
    return np.concatenate(parts, axis=1)


def bootstrap_auc(y: np.ndarray, probs: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Seed-mean AUC of each resample: float [B] for resample indices idx [B, N] (stratified).

    Binary: AUC* = c_pos^T W c_neg / (n_pos n_neg) with W the [n_pos, n_neg] comparison matrix
    (1 / 0.5 / 0) and c the resample's draw counts of each slide; exact, and ~100x faster than
    ranking every resample. Needs stratified resamples (fixed class counts). C > 2: a loop.
    """
    y = np.asarray(y).astype(int).ravel()
    p = with_seed_axis(probs, len(y))
    idx = np.asarray(idx)
    n_boot, n = idx.shape[0], len(y)
    if p.ndim == 3:
        return np.array([np.mean([auc(y[i], ps[i]) for ps in p]) for i in idx])
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(n_boot, np.nan)
    counts = np.bincount((idx + n * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * n)
    counts = counts.reshape(n_boot, n).astype(np.float64)
    c_pos, c_neg = counts[:, pos], counts[:, ~pos]
    out = np.zeros(n_boot)
    for ps in p:
        a, b = ps[pos][:, None], ps[~pos][None, :]
        w = (a > b) + 0.5 * (a == b)                                   # [n_pos, n_neg]
        out += np.einsum("bp,pq,bq->b", c_pos, w, c_neg) / (n_pos * n_neg)
    return out / len(p)


def _percentile_ci(values: np.ndarray, alpha: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def auc_ci(y: np.ndarray, probs: np.ndarray, n_boot: int = 1000, seed: int = 0,
           alpha: float = 0.05) -> tuple[float, float]:
    """Stratified percentile bootstrap (1 - alpha) CI of the seed-mean AUC; (nan, nan) with one class."""
    y = np.asarray(y).astype(int).ravel()
    if np.unique(y).size < 2 or n_boot < 1:
        return float("nan"), float("nan")
    idx = stratified_bootstrap_indices(y, n_boot, seed)
    return _percentile_ci(bootstrap_auc(y, probs, idx), alpha)


def paired_auc_bootstrap(y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, n_boot: int = 1000,
                         seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """AUC(A) - AUC(B) on the same slides: point value, paired stratified bootstrap CI and p-value.

    probs_a, probs_b: [N], [S, N] or [S, N, C] (seed counts may differ) for the same N slides in
    the same order. Returns auc_a, auc_b (seed means), diff (= auc_a - auc_b), ci_lo, ci_hi, p
    (two-sided; see the module docstring). All but the AUCs nan when y has one class.
    """
    y = np.asarray(y).astype(int).ravel()
    a, b = with_seed_axis(probs_a, len(y)), with_seed_axis(probs_b, len(y))
    auc_a, auc_b = seed_mean_auc(y, a), seed_mean_auc(y, b)
    out = {"auc_a": auc_a, "auc_b": auc_b, "diff": auc_a - auc_b,
           "ci_lo": float("nan"), "ci_hi": float("nan"), "p": float("nan")}
    if np.unique(y).size < 2 or n_boot < 1:
        return out
    idx = stratified_bootstrap_indices(y, n_boot, seed)
    d = bootstrap_auc(y, a, idx) - bootstrap_auc(y, b, idx)
    d = d[np.isfinite(d)]
    # Rounding noise must not split exact ties: identical rankings give d == 0 in every resample.
    d = np.where(np.abs(d) < 1e-12, 0.0, d)
    out["ci_lo"], out["ci_hi"] = _percentile_ci(d, alpha)
    # Exact zeros count on both sides: identical predictions give p = 1.
    tail = min(int((d <= 0).sum()), int((d >= 0).sum()))
    out["p"] = min(1.0, 2 * (tail + 1) / (d.size + 1))
    return out


def _midrank_components(pos: np.ndarray, neg: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components: V10 [m] per positive, V01 [n] per negative.

    V10_i = mean_j psi(pos_i, neg_j), V01_j = mean_i psi(pos_i, neg_j), psi = 1 / 0.5 / 0 for
    >, =, <; computed from midranks (Sun & Xu 2014) in O((m + n) log(m + n)).
    """
    m, n = pos.size, neg.size
    r_all = rankdata(np.concatenate([pos, neg]))
    r_pos, r_neg = rankdata(pos), rankdata(neg)
    v10 = (r_all[:m] - r_pos) / n
    v01 = 1.0 - (r_all[m:] - r_neg) / m
    return float(v10.mean()), v10, v01


def delong_test(y: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> dict[str, float]:
    """DeLong's test of AUC(A) = AUC(B) for two scores of the same binary-labelled slides.

    y: [N] (1 = positive); scores_a, scores_b: [N] or [S, N] (seed-mean AUC: components averaged
    over seeds). Returns auc_a, auc_b, diff, se (of the difference), z, p (two-sided, normal).
    With zero variance (e.g. identical scores, or both perfect) p is 1 when diff == 0 and 0
    otherwise. nan when y has one class.
    """
    y = np.asarray(y).astype(bool).ravel()
    nan = float("nan")
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        return {"auc_a": nan, "auc_b": nan, "diff": nan, "se": nan, "z": nan, "p": nan}

    def components(scores: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        parts = [_midrank_components(s[y], s[~y]) for s in with_seed_axis(scores, len(y))]
        return (float(np.mean([p[0] for p in parts])), np.mean([p[1] for p in parts], axis=0),
                np.mean([p[2] for p in parts], axis=0))

    auc_a, v10a, v01a = components(scores_a)
    auc_b, v10b, v01b = components(scores_b)
    # Covariance of (AUC_A, AUC_B): S10 / m + S01 / n (sample covariances of the components).
    s10 = np.cov(np.stack([v10a, v10b])) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(np.stack([v01a, v01b])) if n > 1 else np.zeros((2, 2))
    s = s10 / m + s01 / n
    var = float(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    diff = auc_a - auc_b
    if var <= 1e-15:
        return {"auc_a": auc_a, "auc_b": auc_b, "diff": diff, "se": 0.0, "z": nan,
                "p": 1.0 if abs(diff) < 1e-12 else 0.0}
    se = math.sqrt(var)
    z = diff / se
    return {"auc_a": auc_a, "auc_b": auc_b, "diff": diff, "se": se, "z": z, "p": float(2 * norm.sf(abs(z)))}


def youden_threshold(y: np.ndarray, score: np.ndarray, default: float = 0.5) -> tuple[float, str]:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (prediction: score >= t).

    y: [N] binary labels, score: [N]. Candidates are the midpoints between consecutive distinct
    scores, so the threshold sits between slides rather than on one; ties in J go to the
    candidate nearest `default`. Returns (threshold, source): source "youden" or, when y lacks
    a class or no candidate has J > 0 (the slides carry no usable evidence), (default, "default").
    """
    y = np.asarray(y).astype(bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if y.all() or not y.any():
        return default, "default"
    u = np.unique(s)
    if u.size < 2:
        return default, "default"
    cand = (u[:-1] + u[1:]) / 2
    pred = s[None, :] >= cand[:, None]                       # [T, N]
    sens = (pred & y).sum(1) / y.sum()
    spec = (~pred & ~y).sum(1) / (~y).sum()
    j = sens + spec - 1
    best = np.flatnonzero(np.isclose(j, j.max()))
    if j.max() <= 0:
        return default, "default"
    t = cand[best[np.argmin(np.abs(cand[best] - default))]]
    return float(t), "youden"
