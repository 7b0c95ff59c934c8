"""The patient's call: cells pooled per subject (mean P(ALL)), called at the model's threshold, and judged per patient
with exact binomial intervals; every number here is worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from leukotune.data.errors import DatasetError
from leukotune.tuner.evaluation.patients import MixedSubjectError, exact_interval, judge_patients, patient_rows

# Three patients of two cells: "1" (ALL) scores 0.75, "10" (ALL) 0.425, "H2" (normal) 0.45.
LABELS = np.array([1, 1, 1, 1, 0, 0])
PROBS = np.array([0.9, 0.6, 0.4, 0.45, 0.2, 0.7])
SUBJECTS = np.array(["10", "1", "10", "1", "H2", "H2"])
PROBS_BY_SUBJECT = np.array([0.4, 0.9, 0.45, 0.6, 0.2, 0.7])  # PROBS reordered to SUBJECTS' order


def test_each_patient_gets_its_cells_mean_score_share_call_and_truth():
    rows = patient_rows(LABELS, PROBS_BY_SUBJECT, SUBJECTS, threshold=0.5)
    assert [r.subject for r in rows] == ["1", "10", "H2"]  # natural order: 1 before 10, donors after
    assert [r.cells for r in rows] == [2, 2, 2]
    assert [r.score for r in rows] == pytest.approx([0.75, 0.425, 0.45])
    assert [r.called_all for r in rows] == [1.0, 0.0, 0.5]  # 0.9, 0.6 | 0.4, 0.45 | 0.2, 0.7 at >= 0.5
    assert [(r.call, r.truth, r.right) for r in rows] == [("all", "all", True), ("hem", "all", False),
                                                          ("hem", "hem", True)]


def test_patient_metrics_with_exact_intervals_at_the_threshold():
    result = judge_patients(LABELS, PROBS_BY_SUBJECT, SUBJECTS, threshold=0.5)
    m = result.metrics
    assert (m["patients"], m["patients_all"], m["patients_hem"]) == (3, 2, 1)
    assert m["patient_sensitivity"] == 0.5  # "1" called ALL, "10" missed
    # Clopper-Pearson for 1 of 2: 1 - (1 - p)^2 = 0.025 and 1 - p^2 = 0.025
    assert m["patient_sensitivity_ci95_low"] == pytest.approx(1 - math.sqrt(0.975))
    assert m["patient_sensitivity_ci95_high"] == pytest.approx(math.sqrt(0.975))
    assert m["patient_specificity"] == 1.0  # "H2" (0.45) called normal
    assert (m["patient_specificity_ci95_low"], m["patient_specificity_ci95_high"]) == pytest.approx((0.025, 1.0))
    assert m["patient_roc_auc"] == 0.5  # (0.75 > 0.45) right, (0.425 < 0.45) wrong
    assert (m["patient_cm_true_all_pred_all"], m["patient_cm_true_all_pred_hem"]) == (1, 1)
    assert (m["patient_cm_true_hem_pred_hem"], m["patient_cm_true_hem_pred_all"]) == (1, 0)
    assert result.undefined == {}
    assert result.table() == {"subject": ["1", "10", "H2"], "cells": [2, 2, 2], "score": [0.75, 0.425, 0.45],
                              "called_all": [1.0, 0.0, 0.5], "call": ["all", "hem", "hem"],
                              "truth": ["all", "all", "hem"]}


def test_a_lower_threshold_calls_both_remaining_patients_all():
    # At 0.42 the mean calls "10" (0.425) ALL though only one of its two cells is; and "H2" (0.45) too.
    result = judge_patients(LABELS, PROBS_BY_SUBJECT, SUBJECTS, threshold=0.42)
    m = result.metrics
    assert [r.call for r in result.rows] == ["all", "all", "all"]
    assert [r.called_all for r in result.rows] == [1.0, 0.5, 0.5]
    assert m["patient_sensitivity"] == 1.0 and m["patient_specificity"] == 0.0
    # 2 of 2: lower bound (alpha/2)^(1/n) = 0.025^(1/2); 0 of 1: upper bound 1 - 0.025
    assert (m["patient_sensitivity_ci95_low"], m["patient_sensitivity_ci95_high"]) == pytest.approx((0.025 ** 0.5, 1))
    assert (m["patient_specificity_ci95_low"], m["patient_specificity_ci95_high"]) == pytest.approx((0.0, 0.975))
    assert m["patient_roc_auc"] == 0.5  # the scores, not the calls: the same as at 0.5


@pytest.mark.parametrize("successes, trials, expected", [
    (2, 2, (0.025 ** (1 / 2), 1.0)),
    (0, 1, (0.0, 0.975)),
    (5, 5, (0.025 ** (1 / 5), 1.0)),
    (0, 4, (0.0, 1 - 0.025 ** (1 / 4))),
    (1, 2, (1 - math.sqrt(0.975), math.sqrt(0.975))),
])
def test_clopper_pearson_against_its_closed_forms(successes, trials, expected):
    assert exact_interval(successes, trials) == pytest.approx(expected)


def test_clopper_pearson_agrees_with_scipys_binomial_test_and_is_undefined_without_trials():
    from scipy.stats import binomtest

    interval = binomtest(7, 12).proportion_ci(confidence_level=0.95, method="exact")
    assert exact_interval(7, 12) == pytest.approx((interval.low, interval.high))
    assert all(math.isnan(bound) for bound in exact_interval(0, 0))


def test_a_cohort_of_patients_of_one_class_leaves_specificity_and_roc_auc_undefined_with_the_reason():
    result = judge_patients(np.array([1, 1, 1, 1]), np.array([0.9, 0.8, 0.3, 0.2]), np.array(["4", "4", "7", "7"]),
                            threshold=0.5, prefix="test_")
    m = result.metrics
    assert m["test_patient_sensitivity"] == 0.5 and m["test_patients_hem"] == 0
    for key in ("test_patient_specificity", "test_patient_specificity_ci95_low", "test_patient_specificity_ci95_high",
                "test_patient_roc_auc"):
        assert math.isnan(m[key]), key
    assert result.undefined == {
        "test_patient_specificity": "no normal patients in this cohort",
        "test_patient_specificity_ci95_low": "no normal patients in this cohort",
        "test_patient_specificity_ci95_high": "no normal patients in this cohort",
        "test_patient_roc_auc": "no normal patients in this cohort, and it needs both classes",
    }


def test_a_subject_with_both_labels_is_refused_by_name():
    labels, probs = np.array([1, 0, 1, 1]), np.array([0.9, 0.1, 0.8, 0.7])
    with pytest.raises(MixedSubjectError, match=r"subject 3 \(1 ALL, 1 normal\) mix ALL and normal") as caught:
        judge_patients(labels, probs, np.array(["3", "3", "5", "5"]), threshold=0.5)
    assert isinstance(caught.value, DatasetError)  # one line and exit 2 at the command line
