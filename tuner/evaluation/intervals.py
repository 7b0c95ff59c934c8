"""Honest numbers on a held-out side: the classification metrics plus 95% intervals from a bootstrap over patients.

Cells of one patient share stain, session and morphology, so they are not independent draws: resampling cells
would give intervals far too narrow. The bootstrap here resamples whole subjects, within each class (the test
side is chosen per class, so every resample keeps both), and is vectorised: each resample is a vector of subject
multiplicities, so its confusion matrix is one matrix product and its ROC-AUC one bilinear form over subjects.

A metric the cohort cannot define (specificity without normal cells, ROC-AUC with one class) is NaN, and so is
its interval: `metrics.undefined_metrics` gives the reason.

Plain numpy, no Ray or MLflow: used by the study's test side, `leukotune evaluate` and the benchmarks.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from leukotune.tuner.metrics import classification_metrics

# Metrics that get an interval; sensitivity is the recall of ALL, specificity the recall of hem.
CI_METRICS = ("f1_weighted", "balanced_accuracy", "roc_auc", "sensitivity", "specificity")
DEFAULT_RESAMPLES = 2000
_BLOCK = 256  # resamples per block: bounds memory at a few (block x subjects) float arrays


def metrics_with_intervals(y_true: np.ndarray, prob_all: np.ndarray, subjects: np.ndarray, prefix: str = "test_",
                           resamples: int = DEFAULT_RESAMPLES, seed: int = 0, threshold: float = 0.5
                           ) -> dict[str, float]:
    """Every validation metric (accuracy, balanced accuracy, per-class P/R/F1, macro/weighted F1, ROC-AUC, the
    confusion cells), sensitivity/specificity, a log loss, cell and subject counts, and the patient-bootstrap
    interval of each of CI_METRICS as `<prefix><metric>_ci95_low` / `_ci95_high`; cells are called ALL at
    P(ALL) >= `threshold` (the model's own). Undefined metrics and their intervals are NaN."""
    y_true = np.asarray(y_true, dtype=np.int64)
    prob_all = np.asarray(prob_all, dtype=np.float64)
    point = classification_metrics(y_true, prob_all, threshold)
    point["sensitivity"], point["specificity"] = point["recall_all"], point["recall_hem"]
    p_true = np.where(y_true == 1, prob_all, 1.0 - prob_all)
    point["loss"] = float(-np.log(np.clip(p_true, 1e-7, 1.0)).mean()) if len(y_true) else float("nan")
    point["cells"] = int(len(y_true))
    point["subjects"] = int(len(set(np.asarray(subjects).tolist())))
    for name, (low, high) in patient_bootstrap(y_true, prob_all, subjects, resamples, seed, threshold).items():
        # A percentile interval from few patients can sit lopsided beside the estimate; widening it to include the
        # estimate keeps "the interval around the number" true without narrowing anything.
        value = point[name]
        point[f"{name}_ci95_low"] = min(low, value) if np.isfinite(value) else float("nan")
        point[f"{name}_ci95_high"] = max(high, value) if np.isfinite(value) else float("nan")
    return {f"{prefix}{key}": value for key, value in point.items()}


def patient_bootstrap(y_true: np.ndarray, prob_all: np.ndarray, subjects: np.ndarray,
                      resamples: int = DEFAULT_RESAMPLES, seed: int = 0, threshold: float = 0.5,
                      level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile interval of each of CI_METRICS over `resamples` subject-level resamples (seeded)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    prob_all = np.asarray(prob_all, dtype=np.float64)
    subject_ids, subject_of_cell = np.unique(np.asarray(subjects).astype(str), return_inverse=True)
    if len(y_true) == 0:
        return {name: (float("nan"), float("nan")) for name in CI_METRICS}
    y_pred = (prob_all >= threshold).astype(np.int64)
    # Per-subject confusion counts (S x 4: tn, fp, fn, tp) and per-subject positives/negatives at each score.
    cells = np.zeros((len(subject_ids), 4))
    np.add.at(cells, (subject_of_cell, y_true * 2 + y_pred), 1.0)
    scores = _scores_by_subject(prob_all, y_true, subject_of_cell, len(subject_ids))
    values = {name: [] for name in CI_METRICS}
    rng = np.random.default_rng(seed)
    for weights in _subject_weights(y_true, subject_of_cell, len(subject_ids), resamples, rng):
        for name, column in _block_metrics(weights, cells, scores).items():
            values[name].append(column)
    tail = (1.0 - level) / 2.0 * 100.0
    out = {}
    for name, chunks in values.items():
        sample = np.concatenate(chunks)
        sample = sample[np.isfinite(sample)]
        out[name] = ((float(np.percentile(sample, tail)), float(np.percentile(sample, 100.0 - tail)))
                     if len(sample) else (float("nan"), float("nan")))
    return out


def _subject_weights(y_true: np.ndarray, subject_of_cell: np.ndarray, n_subjects: int, resamples: int,
                     rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Blocks of (resamples x subjects) multiplicities: each class's subjects drawn with replacement, as many as it
    has (a subject's class is its majority label; C-NMC subjects are single-class)."""
    votes = np.zeros((n_subjects, 2))
    np.add.at(votes, (subject_of_cell, y_true), 1.0)
    subject_class = votes.argmax(axis=1)
    groups = [np.flatnonzero(subject_class == label) for label in (0, 1)]
    for start in range(0, resamples, _BLOCK):
        block = min(_BLOCK, resamples - start)
        weights = np.zeros((block, n_subjects))
        for members in groups:
            if len(members):
                picks = members[rng.integers(0, len(members), size=(block, len(members)))]
                np.add.at(weights, (np.arange(block)[:, None], picks), 1.0)
        yield weights


def _scores_by_subject(prob_all: np.ndarray, y_true: np.ndarray, subject_of_cell: np.ndarray,
                       n_subjects: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC-AUC as a bilinear form over subjects: `wins[s, t]` counts the (ALL cell of s, hem cell of t) pairs the
    model orders right (ties half), so a resample's Mann-Whitney numerator is `w @ wins @ w`, whatever the number
    of cells; plus each subject's ALL and hem cell counts for the denominator."""
    _, position = np.unique(prob_all, return_inverse=True)
    n_scores = int(position.max()) + 1
    tables = []
    for label in (1, 0):  # per subject, how many of its cells of this class sit at each distinct score
        table = np.zeros((n_subjects, n_scores))
        chosen = y_true == label
        np.add.at(table, (subject_of_cell[chosen], position[chosen]), 1.0)
        tables.append(table)
    positives, negatives = tables
    beaten = np.cumsum(negatives, axis=1) - negatives + 0.5 * negatives  # hem cells below each score, ties half
    return positives @ beaten.T, positives.sum(axis=1), negatives.sum(axis=1)


def _block_metrics(weights: np.ndarray, cells: np.ndarray,
                   scores: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """The CI metrics for a block of resamples, each a vector over the block."""
    tn, fp, fn, tp = (weights @ cells).T
    support_hem, support_all = tn + fp, tp + fn
    # As `classification_metrics`: a recall without cells of its class is undefined, and so is balanced accuracy;
    # F1 is 2TP / (2TP + FP + FN), and a class without cells weighs nothing in the weighted mean.
    recall_hem, recall_all = _ratio(tn, support_hem), _ratio(tp, support_all)
    f1_hem, f1_all = _ratio(2 * tn, 2 * tn + fn + fp, empty=0.0), _ratio(2 * tp, 2 * tp + fp + fn, empty=0.0)
    f1_weighted = _ratio(f1_hem * support_hem + f1_all * support_all, support_hem + support_all)
    return {"f1_weighted": f1_weighted, "balanced_accuracy": (recall_hem + recall_all) / 2.0,
            "roc_auc": _weighted_auc(weights, *scores),
            "sensitivity": recall_all, "specificity": recall_hem}


def _weighted_auc(weights: np.ndarray, wins: np.ndarray, n_all: np.ndarray, n_hem: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of each resample: right-ordered (ALL, hem) pairs over all pairs, subjects weighted by their
    multiplicity; NaN when a resample lacks a class."""
    return _ratio(((weights @ wins) * weights).sum(axis=1), (weights @ n_all) * (weights @ n_hem))


def _ratio(num: np.ndarray, den: np.ndarray, empty: float = np.nan) -> np.ndarray:
    """num/den with `empty` (undefined) where den is 0."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full_like(num, empty), where=den > 0)
