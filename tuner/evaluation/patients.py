"""The patient's call: a cell classifier's cells pooled into one score per subject, called, and judged per patient.

A cell classifier is not a diagnosis, but every C-NMC subject is wholly ALL (a patient) or wholly normal (a healthy
donor), so each subject has one truth and its cells one verdict:

- score: the mean calibrated P(ALL) of the subject's cells; the subject is called ALL when its score is at or above
  the model's threshold, the same one its cells are called at. The mean, not the share of cells called ALL (shown
  beside it), decides: it stays on the probability scale the calibration and the threshold were fitted on, so one
  threshold means the same for a cell and a patient, and it is continuous, so the patient ROC-AUC has few ties;
  the share applies the threshold twice and, with a few cells a patient, takes a few values only.
- sensitivity (ALL patients called ALL) and specificity (normal donors called normal) with exact binomial
  (Clopper-Pearson) 95% intervals: here the patients are the independent draws, they are few, and the exact
  interval never covers less than it says.
- ROC-AUC of the scores over patients, with no interval: none is computed (with a handful of patients a bootstrap
  interval of an AUC would be unreliable; the cell-level ROC-AUC has its interval by patient).
- A metric the cohort cannot define (specificity without a normal donor, ROC-AUC with one class of patient) is NaN,
  with its reason in `undefined`.

Plain numpy and scipy, no Ray or MLflow: `leukotune evaluate` calls `judge_patients`, and the study's test side can.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from leukotune.data import CLASS_NAMES
from leukotune.data.errors import DatasetError
from leukotune.tuner.metrics import confusion_matrix, roc_auc, undefined_metrics

SCORE = "mean P(ALL) of the patient's cells"
LEVEL = 0.95


class MixedSubjectError(DatasetError):
    """A subject has both ALL and normal cells: C-NMC subjects are one or the other, so its truth is unknown."""


@dataclass(frozen=True)
class PatientRow:
    """One subject: its cells, its score (mean P(ALL)), the share of its cells called ALL, its call and its truth
    (`all` or `hem`, as the cell classes)."""

    subject: str
    cells: int
    score: float
    called_all: float
    call: str
    truth: str

    @property
    def right(self) -> bool:
        return self.call == self.truth

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "score": round(self.score, 6), "called_all": round(self.called_all, 6)}


@dataclass(frozen=True)
class PatientResults:
    """The per-patient table and the patient-level metrics (flat, NaN where undefined, each key after the caller's
    prefix), with the reason for each undefined one."""

    threshold: float
    rows: list[PatientRow]
    metrics: dict[str, float]
    undefined: dict[str, str]

    def table(self) -> dict[str, list[Any]]:
        """The rows as columns, what `mlflow.log_table` takes."""
        columns = ("subject", "cells", "score", "called_all", "call", "truth")
        return {name: [row.to_dict()[name] for row in self.rows] for name in columns}


def judge_patients(labels: np.ndarray, prob_all: np.ndarray, subjects: np.ndarray, threshold: float,
                   prefix: str = "", level: float = LEVEL) -> PatientResults:
    """Pool the cells (label 1 = ALL, their calibrated P(ALL), their subject) into one row per subject, call each
    at `threshold`, and judge the calls: counts, sensitivity and specificity with exact intervals, ROC-AUC.

    Raises MixedSubjectError naming any subject whose cells carry both labels."""
    rows = patient_rows(labels, prob_all, subjects, threshold)
    truth = np.array([CLASS_NAMES.index(row.truth) for row in rows], dtype=np.int64)
    called = np.array([CLASS_NAMES.index(row.call) for row in rows], dtype=np.int64)
    cm = confusion_matrix(truth, called)
    metrics: dict[str, float] = {"patients": len(rows), "patients_all": int(cm[1].sum()),
                                 "patients_hem": int(cm[0].sum())}
    for name, right, total in (("sensitivity", cm[1, 1], cm[1].sum()), ("specificity", cm[0, 0], cm[0].sum())):
        metrics[f"patient_{name}"] = float(right / total) if total else float("nan")
        low, high = exact_interval(int(right), int(total), level)
        metrics[f"patient_{name}_ci95_low"], metrics[f"patient_{name}_ci95_high"] = low, high
    metrics["patient_roc_auc"] = roc_auc(truth, np.array([row.score for row in rows]))
    for (i, j), count in np.ndenumerate(cm):
        metrics[f"patient_cm_true_{CLASS_NAMES[i]}_pred_{CLASS_NAMES[j]}"] = int(count)
    metrics = {f"{prefix}{key}": value for key, value in metrics.items()}
    return PatientResults(threshold, rows, metrics, undefined_metrics(metrics, f"{prefix}patient_", unit="patients"))


def patient_rows(labels: np.ndarray, prob_all: np.ndarray, subjects: np.ndarray, threshold: float
                 ) -> list[PatientRow]:
    """One row per subject, in natural order of the subject IDs (2 before 10, ALL patients before H donors)."""
    labels = np.asarray(labels, dtype=np.int64)
    prob_all = np.asarray(prob_all, dtype=np.float64)
    ids, subject_of_cell = np.unique(np.asarray(subjects).astype(str), return_inverse=True)
    cells = np.bincount(subject_of_cell, minlength=len(ids))
    all_cells = np.bincount(subject_of_cell, weights=labels, minlength=len(ids))
    mixed = [f"{ids[s]} ({int(all_cells[s])} ALL, {int(cells[s] - all_cells[s])} normal)"
             for s in range(len(ids)) if 0 < all_cells[s] < cells[s]]
    if mixed:
        raise MixedSubjectError(f"subject{'s' if len(mixed) > 1 else ''} {', '.join(mixed)} mix ALL and normal "
                                "cells; a C-NMC subject is wholly one or the other, so the patient's truth is unknown")
    score = np.bincount(subject_of_cell, weights=prob_all, minlength=len(ids)) / np.maximum(cells, 1)
    called = np.bincount(subject_of_cell, weights=prob_all >= threshold, minlength=len(ids)) / np.maximum(cells, 1)
    rows = [PatientRow(str(ids[s]), int(cells[s]), float(score[s]), float(called[s]),
                       CLASS_NAMES[int(score[s] >= threshold)], CLASS_NAMES[int(all_cells[s] > 0)])
            for s in range(len(ids))]
    return sorted(rows, key=lambda row: _natural_key(row.subject))


def exact_interval(successes: int, trials: int, level: float = LEVEL) -> tuple[float, float]:
    """Clopper-Pearson interval of a binomial proportion: the beta quantiles, 0 and 1 at the ends (for x = n the
    lower bound is ((1 - level) / 2) ** (1 / n)); NaN with no trials."""
    if trials == 0:
        return float("nan"), float("nan")
    from scipy.stats import beta  # on first use: importing scipy.stats takes a second or more


    tail = (1.0 - level) / 2.0
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1.0 - tail, successes + 1, trials - successes))
    return low, high


def _natural_key(subject: str) -> list[Any]:
    # re.split with a group puts the digit runs at the odd positions, so compared keys line up str with str.
    return [int(part) if index % 2 else part for index, part in enumerate(re.split(r"(\d+)", subject))]
