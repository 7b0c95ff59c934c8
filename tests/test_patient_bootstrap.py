"""Confidence intervals by patient: the bootstrap resamples subjects (not cells), is seeded, contains its point
estimate, and agrees with the plain metrics when every subject is drawn once."""
from __future__ import annotations

import numpy as np
import pytest

from leukotune.tuner.evaluation.intervals import (
    CI_METRICS,
    _block_metrics,
    _scores_by_subject,
    metrics_with_intervals,
    patient_bootstrap,
)
from leukotune.tuner.metrics import classification_metrics, undefined_metrics


def _cohort(n_subjects: int = 20, cells: int = 100, seed: int = 0, subject_sd: float = 0.15):
    """Subjects 2:1 ALL:hem; each subject shifts all its cells' scores together (a patient effect)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n_subjects) % 3 != 0).astype(np.int64)
    shift = rng.normal(0.0, subject_sd, n_subjects)
    y = np.repeat(labels, cells)
    subjects = np.repeat([f"S{i}" for i in range(n_subjects)], cells)
    prob = np.clip(0.35 + 0.3 * y + np.repeat(shift, cells) + rng.normal(0, 0.15, len(y)), 0, 1).round(3)
    return y, prob, subjects


def test_every_interval_contains_its_point_estimate() -> None:
    for seed in range(5):
        y, prob, subjects = _cohort(seed=seed, n_subjects=8 + seed, cells=30)
        metrics = metrics_with_intervals(y, prob, subjects, seed=seed)
        for name in CI_METRICS:
            low, point, high = (metrics[f"test_{name}_ci95_low"], metrics[f"test_{name}"],
                                metrics[f"test_{name}_ci95_high"])
            assert low <= point <= high, (seed, name, low, point, high)
            assert high - low > 0  # patients differ, so the interval has width


def test_identity_resample_reproduces_the_plain_metrics() -> None:
    y, prob, subjects = _cohort()
    _, subject_of_cell = np.unique(subjects, return_inverse=True)
    cells = np.zeros((20, 4))
    np.add.at(cells, (subject_of_cell, y * 2 + (prob >= 0.5)), 1.0)
    once = _block_metrics(np.ones((1, 20)), cells, _scores_by_subject(prob, y, subject_of_cell, 20))
    plain = classification_metrics(y, prob)
    expected = {**plain, "sensitivity": plain["recall_all"], "specificity": plain["recall_hem"]}
    for name in CI_METRICS:
        assert once[name][0] == pytest.approx(expected[name], abs=1e-12), name


def test_resampling_is_by_subject_not_by_cell() -> None:
    # Strong patient effect: resampling cells would pretend 2,000 independent draws and give a narrow interval.
    y, prob, subjects = _cohort(subject_sd=0.25)
    by_subject = patient_bootstrap(y, prob, subjects, resamples=500, seed=1)
    by_cell = patient_bootstrap(y, prob, np.arange(len(y)).astype(str), resamples=500, seed=1)  # a cell per "subject"
    for name in ("balanced_accuracy", "roc_auc", "sensitivity"):
        width_subject = by_subject[name][1] - by_subject[name][0]
        width_cell = by_cell[name][1] - by_cell[name][0]
        assert width_subject > 2 * width_cell, (name, width_subject, width_cell)


def test_a_lone_subject_of_a_class_gives_that_class_no_spread() -> None:
    # Resampled within class: one hem subject is always drawn, so specificity never varies between resamples.
    y = np.array([0] * 10 + [1] * 30)
    prob = np.concatenate([np.linspace(0.1, 0.7, 10), np.linspace(0.3, 0.9, 30)])
    subjects = np.array(["H1"] * 10 + ["1"] * 10 + ["2"] * 10 + ["3"] * 10)
    low, high = patient_bootstrap(y, prob, subjects, seed=0)["specificity"]
    assert low == high == pytest.approx(classification_metrics(y, prob)["recall_hem"])


def test_seeded_and_sensitive_to_the_seed() -> None:
    y, prob, subjects = _cohort(n_subjects=9, cells=20)
    assert patient_bootstrap(y, prob, subjects, seed=4) == patient_bootstrap(y, prob, subjects, seed=4)
    assert patient_bootstrap(y, prob, subjects, seed=4) != patient_bootstrap(y, prob, subjects, seed=5)


def test_reports_the_same_metrics_as_validation_plus_counts() -> None:
    y, prob, subjects = _cohort(n_subjects=6, cells=10)
    metrics = metrics_with_intervals(y, prob, subjects, prefix="test_")
    for name in classification_metrics(y, prob):
        assert f"test_{name}" in metrics
    assert metrics["test_cells"] == 60 and metrics["test_subjects"] == 6
    assert metrics["test_sensitivity"] == metrics["test_recall_all"]


def test_the_interval_is_taken_at_the_threshold_given() -> None:
    # One hem subject: its specificity has no spread, so the interval is the point at whatever threshold is used.
    y = np.array([0] * 10 + [1] * 30)
    prob = np.concatenate([np.linspace(0.1, 0.7, 10), np.linspace(0.3, 0.9, 30)])
    subjects = np.array(["H1"] * 10 + ["1"] * 10 + ["2"] * 10 + ["3"] * 10)
    for threshold in (0.5, 0.65):
        metrics = metrics_with_intervals(y, prob, subjects, prefix="", resamples=200, threshold=threshold)
        expected = classification_metrics(y, prob, threshold)["recall_hem"]
        assert metrics["specificity"] == metrics["specificity_ci95_low"] == pytest.approx(expected)
        assert metrics["specificity_ci95_high"] == pytest.approx(expected)
    assert expected == pytest.approx(9 / 10)  # at 0.65: the cells at 0.1 ... 0.633 of the ten, called normal


def test_a_cohort_without_normal_cells_has_no_specificity_and_no_interval_for_it() -> None:
    y = np.ones(12, dtype=np.int64)
    prob = np.linspace(0.3, 0.9, 12)
    subjects = np.repeat(["1", "2", "3"], 4)
    metrics = metrics_with_intervals(y, prob, subjects, prefix="", resamples=200)
    for name in ("specificity", "balanced_accuracy", "roc_auc"):
        assert all(np.isnan(metrics[key]) for key in (name, f"{name}_ci95_low", f"{name}_ci95_high")), name
    assert metrics["sensitivity_ci95_low"] <= metrics["sensitivity"] <= metrics["sensitivity_ci95_high"]
    assert metrics["f1_weighted"] == pytest.approx(metrics["f1_all"])  # the absent class weighs nothing
    reasons = undefined_metrics(metrics)
    assert reasons["specificity_ci95_high"] == reasons["specificity"] == "no normal cells in this cohort"
    assert set(reasons) == {key for key, value in metrics.items() if isinstance(value, float) and np.isnan(value)}
