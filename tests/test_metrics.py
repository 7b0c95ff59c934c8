"""Metrics against confusion matrices worked out by hand."""
import math

import numpy as np
import pytest

from leukotune.tuner.metrics import classification_metrics, confusion_matrix, roc_auc


def test_confusion_matrix_rows_true_columns_predicted():
    cm = confusion_matrix(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0]))
    assert cm.tolist() == [[1, 1], [1, 2]]


def test_metrics_match_hand_computed_values():
    # 4 hem (3 right), 6 ALL (4 right): cm = [[3, 1], [2, 4]]
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    prob = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.6, 0.55, 0.4, 0.2])
    m = classification_metrics(y_true, prob)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["precision_hem"] == pytest.approx(3 / 5)
    assert m["recall_hem"] == pytest.approx(3 / 4)
    assert m["precision_all"] == pytest.approx(4 / 5)
    assert m["recall_all"] == pytest.approx(4 / 6)
    f1_hem = 2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4)
    f1_all = 2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6)
    assert m["f1_macro"] == pytest.approx((f1_hem + f1_all) / 2)
    assert m["f1_weighted"] == pytest.approx(0.4 * f1_hem + 0.6 * f1_all)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert (m["cm_true_hem_pred_hem"], m["cm_true_hem_pred_all"]) == (3, 1)
    assert (m["cm_true_all_pred_hem"], m["cm_true_all_pred_all"]) == (2, 4)


@pytest.mark.parametrize("y_true, score, expected", [
    ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0),
    ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.0),
    ([0, 1], [0.5, 0.5], 0.5),                       # a tie counts half
    ([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], 0.75),      # 3 of 4 pos-neg pairs ordered right
])
def test_roc_auc_cases(y_true, score, expected):
    assert roc_auc(np.array(y_true), np.array(score)) == pytest.approx(expected)


def test_roc_auc_is_nan_with_one_class_and_precision_zero_without_predictions():
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.3, 0.7])))
    m = classification_metrics(np.array([0, 1, 1]), np.array([0.9, 0.8, 0.7]))  # everything predicted ALL
    assert m["precision_hem"] == 0.0 and m["recall_hem"] == 0.0
