"""Metrics against confusion matrices worked out by hand."""
import math

import numpy as np
import pytest

from leukotune.tuner.metrics import (
    classification_metrics,
    confusion_matrix,
    format_value,
    roc_auc,
    undefined_metrics,
    undefined_reasons,
)


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


def test_precision_of_a_class_never_called_is_undefined_not_zero():
    m = classification_metrics(np.array([0, 1, 1]), np.array([0.9, 0.8, 0.7]))  # everything called ALL
    assert math.isnan(m["precision_hem"]) and math.isnan(m["precision_macro"]) and math.isnan(m["precision_weighted"])
    assert m["recall_hem"] == 0.0 and m["f1_hem"] == 0.0  # the one normal cell was there and was missed: 0 is right
    assert m["precision_all"] == pytest.approx(2 / 3) and m["recall_all"] == 1.0
    f1_all = 2 * 2 / (2 * 2 + 1 + 0)  # 2TP / (2TP + FP + FN)
    assert m["f1_all"] == pytest.approx(f1_all) and m["f1_weighted"] == pytest.approx((1 * 0.0 + 2 * f1_all) / 3)
    assert m["balanced_accuracy"] == pytest.approx(0.5) and m["roc_auc"] == pytest.approx(0.0)
    reasons = undefined_reasons(confusion_matrix(np.array([0, 1, 1]), np.array([1, 1, 1])))
    assert reasons == {name: "none of the 3 cells was called normal"
                       for name in ("precision_hem", "precision_macro", "precision_weighted")}


def test_a_cohort_of_one_class_leaves_what_needs_the_other_undefined():
    # Three ALL cells, no normal one; at 0.5 one ALL cell is called hem: cm = [[0, 0], [1, 2]].
    m = classification_metrics(np.array([1, 1, 1]), np.array([0.9, 0.4, 0.7]))
    assert m["accuracy"] == pytest.approx(2 / 3) and m["recall_all"] == pytest.approx(2 / 3)
    assert m["precision_all"] == 1.0 and m["precision_hem"] == 0.0  # one cell called normal, wrongly: defined
    assert m["f1_all"] == pytest.approx(0.8) and m["f1_weighted"] == pytest.approx(0.8)  # 2*2 / (2*2 + 0 + 1)
    assert m["precision_weighted"] == 1.0 and m["recall_weighted"] == pytest.approx(2 / 3)  # hem weighs nothing
    undefined = {name for name, value in m.items() if isinstance(value, float) and math.isnan(value)}
    assert undefined == {"recall_hem", "f1_hem", "balanced_accuracy", "roc_auc", "recall_macro", "f1_macro"}
    reasons = undefined_reasons(confusion_matrix(np.array([1, 1, 1]), np.array([1, 0, 1])))
    assert reasons["specificity"] == reasons["recall_hem"] == "no normal cells in this cohort"
    assert reasons["roc_auc"] == "no normal cells in this cohort, and it needs both classes"
    assert set(reasons) == undefined | {"specificity"}
    assert undefined_reasons(np.zeros((2, 2)), unit="patients")["accuracy"] == "no patients in this cohort"


def test_cells_are_called_at_the_threshold_given():
    y, prob = np.array([0, 0, 1, 1]), np.array([0.2, 0.6, 0.7, 0.9])
    assert classification_metrics(y, prob)["cm_true_hem_pred_all"] == 1
    at_065 = classification_metrics(y, prob, threshold=0.65)
    assert at_065["cm_true_hem_pred_all"] == 0 and at_065["accuracy"] == 1.0
    assert math.isnan(classification_metrics(y, prob, threshold=0.95)["precision_all"])  # nothing called ALL


def test_undefined_metrics_reads_the_reasons_from_the_counts_and_covers_intervals():
    metrics = {f"test_{k}": v for k, v in classification_metrics(np.array([1, 1]), np.array([0.9, 0.8])).items()}
    metrics.update(test_specificity=float("nan"), test_specificity_ci95_low=float("nan"), test_loss=float("nan"))
    found = undefined_metrics(metrics, prefix="test_")
    assert found["test_specificity_ci95_low"] == found["test_recall_hem"] == "no normal cells in this cohort"
    assert found["test_precision_hem"] == "none of the 2 cells was called normal"
    assert "test_loss" not in found and "test_recall_all" not in found  # unexplained NaN; defined value


def test_undefined_values_read_as_undefined_with_their_reason():
    assert format_value(float("nan"), "no normal cells in this cohort") == "undefined (no normal cells in this cohort)"
    assert format_value(None) == "undefined" and format_value(0.0) == "0.0000" and format_value(3) == "3"

