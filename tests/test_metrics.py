"""Slide metrics on hand-computable cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from slidemil.evaluate.metrics import auc_binary, binary_metrics, label_metrics, predict


def test_binary_hand_case():
    y = np.array([0, 0, 1, 1])
    prob = np.array([0.1, 0.6, 0.4, 0.8])
    m = binary_metrics(y, prob)
    # Pairs (pos, neg): (0.4>0.1) (0.4<0.6) (0.8>0.1) (0.8>0.6) -> 3/4.
    assert m["auc"] == pytest.approx(0.75)
    # pred = [0, 1, 0, 1]: recall(1) = 1/2, recall(0) = 1/2; precision(1) = 1/2 -> F1 = 1/2.
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)
    assert (m["sensitivity"], m["specificity"]) == pytest.approx((0.5, 0.5))
    # A lower threshold predicts [0, 1, 1, 1]: recall(1) = 1, recall(0) = 1/2; F1 = 2*(2/3*1)/(5/3).
    m = binary_metrics(y, prob, threshold=0.3)
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(0.8)
    assert (m["sensitivity"], m["specificity"]) == pytest.approx((1.0, 0.5))


def test_label_metrics_on_hard_predictions():
    y = np.array([0, 0, 0, 1, 1])
    pred = np.array([0, 1, 0, 1, 0])
    m = label_metrics(y, pred)
    # sensitivity 1/2, specificity 2/3, balanced accuracy their mean; F1: P = 1/2, R = 1/2.
    assert m == pytest.approx({"balanced_accuracy": 7 / 12, "f1": 0.5, "sensitivity": 0.5, "specificity": 2 / 3})
    assert math.isnan(label_metrics(np.zeros(3, int), np.zeros(3, int))["sensitivity"])  # no positives
    assert predict(np.array([0.2, 0.5, 0.7]), 0.5).tolist() == [0, 1, 1]
    assert predict(np.array([[0.1, 0.5, 0.4], [0.6, 0.2, 0.2]])).tolist() == [1, 0]


def test_two_column_prob_equals_positive_column():
    y = np.array([0, 1, 1, 0, 1])
    p1 = np.array([0.2, 0.7, 0.55, 0.51, 0.9])
    assert binary_metrics(y, np.stack([1 - p1, p1], 1)) == binary_metrics(y, p1)


def test_ties_and_agreement_with_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    score = np.round(rng.random(200), 1)  # many ties
    assert auc_binary(y, score) == pytest.approx(roc_auc_score(y, score))
    assert auc_binary([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


def test_one_class_auc_is_nan_not_crash():
    m = binary_metrics(np.array([1, 1, 1]), np.array([0.9, 0.2, 0.7]))
    assert math.isnan(m["auc"])
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert math.isnan(binary_metrics(np.array([], int), np.array([]))["auc"])


def test_multiclass():
    y = np.array([0, 1, 2, 2])
    prob = np.array([[0.8, 0.1, 0.1],
                     [0.2, 0.5, 0.3],
                     [0.1, 0.6, 0.3],   # argmax 1: wrong
                     [0.1, 0.2, 0.7]])
    m = binary_metrics(y, prob)
    # argmax [0, 1, 1, 2]: recalls 1, 1, 1/2 -> balanced accuracy 5/6.
    assert m["balanced_accuracy"] == pytest.approx(5 / 6)
    # F1 per class: 1, 2/3 (P=1/2, R=1), 2/3 (P=1, R=1/2) -> macro 7/9.
    assert m["f1"] == pytest.approx(7 / 9)
    # OvR AUCs: class 0: 1; class 1: pos 0.5 vs neg {0.1, 0.6, 0.2} -> 2/3;
    # class 2: pos {0.3, 0.7} vs neg {0.1, 0.3} -> (1 + 0.5 + 1 + 1)/4 = 7/8.
    assert m["auc"] == pytest.approx((1 + 2 / 3 + 7 / 8) / 3)
    assert m["auc"] == pytest.approx(roc_auc_score(y, prob, multi_class="ovr", average="macro"))
    assert math.isnan(m["sensitivity"]) and math.isnan(m["specificity"])  # no single positive class
