"""Calibrated P(ALL) and an operating point, both fitted on a model's validation side, never on test.

Calibration is temperature scaling: one number T divides the network's class logits before the softmax, so the
ranking of cells (ROC-AUC) and the calls at P(ALL) = 0.5 stay as trained and only the confidence changes. With two
classes, softmax(z / T)[ALL] = sigmoid((z_ALL - z_hem) / T), and z_ALL - z_hem is exactly logit(P(ALL)) at T = 1,
also for a cross-validated ensemble, whose output is log(mean probability): so T is fitted on logit(P(ALL)) as the
inference path gives it, and the same T divides the logits in `inference.probabilities`. P(ALL) in float32 is
within 1e-7 of 0 or 1 only beyond a logit of about 16, so scores are held at +-16.1 (invisible in practice).

- `fit_temperature`: the T that minimises the mean negative log-likelihood of the labels. The NLL is convex in 1/T
  (a one-parameter logistic regression without intercept), so it has one minimum along log T, found by golden-
  section search over T in [0.05, 20] to 1e-9 in log T. A validation side the model separates perfectly has no
  finite optimum (sharper is always better): T stops at the lower bound and `at_bound` says so.
- `expected_calibration_error`: 10 equal-width bins of P(ALL) ([0, 0.1), ..., [0.9, 1.0]); in each bin the gap
  between the mean P(ALL) and the fraction of ALL cells, weighted by the bin's share of cells. `brier_score`: the
  mean of (P(ALL) - [cell is ALL])^2 (half the two-class multi-class Brier score). `reliability`: the bins as data.
- `choose_threshold`: the decision threshold for a target on validation. For `sensitivity` (recall of ALL), the
  largest threshold whose validation sensitivity is >= the target, so specificity is as high as it can be there;
  for `specificity` (recall of hem), the smallest threshold (just above a hem cell's P(ALL)) whose validation
  specificity is >= the target, so sensitivity is as high as it can be. A target in (0, 1] is always reachable on a
  side that holds cells of its class (at worst by calling every cell ALL, or none); with no such cell it cannot be
  met and `TargetUnmetError` says so (promote then registers nothing).

Plain numpy, no MLflow: the test side's Ray task imports it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from leukotune.tuner.evaluation.intervals import DEFAULT_RESAMPLES, patient_bootstrap

TEMPERATURE_BOUNDS = (0.05, 20.0)
N_BINS = 10
_CLIP = 1e-7  # float32's resolution near 1: logit scores within +-16.1
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_TOLERANCE = 1e-9  # in log T

# What a registered model version carries (set by `leukotune promote`, read by `load_model`).
TAG_TEMPERATURE = "leukotune.temperature"
TAG_THRESHOLD = "leukotune.threshold"
TAG_OPERATING_POINT = "leukotune.operating_point"
TAG_CALIBRATION = "leukotune.calibration"
# The trial run's record of its calibration (the test side writes it, promote reads it).
TEMPERATURE_METRIC = "calibration_temperature"
CELL_SCORES_FILE = "calibration/cell_scores.json"
DEFAULT_THRESHOLD = 0.5
TARGETS = ("sensitivity", "specificity")


class TargetUnmetError(ValueError):
    """The validation side cannot meet the operating point's target (it has no cell of the target's class)."""


def logit_scores(prob_all: np.ndarray) -> np.ndarray:
    """logit(P(ALL)) = z_ALL - z_hem, the score the temperature divides (held at +-16.1, see the module)."""
    p = np.clip(np.asarray(prob_all, dtype=np.float64), _CLIP, 1.0 - _CLIP)
    return np.log(p) - np.log1p(-p)


def calibrate(prob_all: np.ndarray, temperature: float) -> np.ndarray:
    """P(ALL) with the logits divided by `temperature`: what `inference.probabilities` gives at that temperature."""
    if temperature == 1.0:
        return np.asarray(prob_all, dtype=np.float64)
    return _sigmoid(logit_scores(prob_all) / temperature)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warning for large |x|


def negative_log_likelihood(prob_all: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log P(true class) (P clipped at 1e-12 so a wrong certainty costs a large, finite amount)."""
    p, y = np.asarray(prob_all, dtype=np.float64), np.asarray(labels)
    p_true = np.where(y == 1, p, 1.0 - p)
    return float(-np.log(np.clip(p_true, 1e-12, 1.0)).mean()) if len(y) else float("nan")


def _scaled_nll(scores: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    # -log sigmoid(+-s/T) = softplus(-+s/T), stable for any margin.
    signed = np.where(labels == 1, -scores, scores) / temperature
    return float(np.logaddexp(0.0, signed).mean())


@dataclass(frozen=True)
class TemperatureFit:
    temperature: float
    at_bound: bool  # the optimum lies at (or beyond) a bound of TEMPERATURE_BOUNDS
    nll_before: float  # mean NLL on the fitting side at T = 1 and at the fitted T
    nll_after: float


def fit_temperature(prob_all: np.ndarray, labels: np.ndarray,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> TemperatureFit:
    """The temperature minimising the mean NLL of `labels` given P(ALL) (golden-section search over log T)."""
    scores, y = logit_scores(prob_all), np.asarray(labels, dtype=np.int64)
    if len(y) == 0:
        raise ValueError("no cells to fit a temperature on")
    low, high = math.log(bounds[0]), math.log(bounds[1])
    a, b = low + (1 - _GOLDEN) * (high - low), low + _GOLDEN * (high - low)
    fa, fb = _scaled_nll(scores, y, math.exp(a)), _scaled_nll(scores, y, math.exp(b))
    lo, hi = low, high
    while hi - lo > _TOLERANCE:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - _GOLDEN) * (hi - lo)
            fa = _scaled_nll(scores, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = _scaled_nll(scores, y, math.exp(b))
    log_t = (lo + hi) / 2.0
    temperature = math.exp(log_t)
    at_bound = min(log_t - low, high - log_t) < 1e-6
    return TemperatureFit(temperature, at_bound, _scaled_nll(scores, y, 1.0), _scaled_nll(scores, y, temperature))


def _bin_of(prob_all: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((np.asarray(prob_all, dtype=np.float64) * bins).astype(np.int64), bins - 1)


def reliability(prob_all: np.ndarray, labels: np.ndarray, bins: int = N_BINS) -> list[dict[str, float]]:
    """Each equal-width bin of P(ALL): its edges, its cells, their mean P(ALL) and the fraction that are ALL (NaN
    for an empty bin)."""
    p, y = np.asarray(prob_all, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    which = _bin_of(p, bins)
    rows = []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        rows.append({"low": b / bins, "high": (b + 1) / bins, "cells": count,
                     "mean_p_all": float(p[inside].mean()) if count else float("nan"),
                     "fraction_all": float(y[inside].mean()) if count else float("nan")})
    return rows


def expected_calibration_error(prob_all: np.ndarray, labels: np.ndarray, bins: int = N_BINS) -> float:
    """Sum over the equal-width bins of (bin's share of cells) x |mean P(ALL) - fraction ALL|."""
    total = len(np.asarray(labels))
    if total == 0:
        return float("nan")
    return float(sum(row["cells"] / total * abs(row["mean_p_all"] - row["fraction_all"])
                     for row in reliability(prob_all, labels, bins) if row["cells"]))


def brier_score(prob_all: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared gap between P(ALL) and the label (1 for ALL)."""
    p, y = np.asarray(prob_all, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    return float(((p - y) ** 2).mean()) if len(y) else float("nan")


def calibration_metrics(fit: TemperatureFit, test_prob: np.ndarray, test_labels: np.ndarray,
                        prefix: str = "test_") -> dict[str, float]:
    """ECE, Brier score and NLL of the test side as trained and calibrated at the fitted temperature, and the
    temperature itself (`calibration_temperature`)."""
    calibrated = calibrate(test_prob, fit.temperature)
    return {TEMPERATURE_METRIC: fit.temperature,
            f"{prefix}ece": expected_calibration_error(test_prob, test_labels),
            f"{prefix}ece_calibrated": expected_calibration_error(calibrated, test_labels),
            f"{prefix}brier": brier_score(test_prob, test_labels),
            f"{prefix}brier_calibrated": brier_score(calibrated, test_labels),
            f"{prefix}loss_calibrated": negative_log_likelihood(calibrated, test_labels)}


# ---------------------------------------------------------------- the operating point

def sensitivity_specificity(labels: np.ndarray, prob_all: np.ndarray, threshold: float) -> tuple[float, float]:
    """(recall of ALL, recall of hem) when a cell is called ALL at P(ALL) >= threshold; NaN for an absent class."""
    y, called = np.asarray(labels), np.asarray(prob_all, dtype=np.float64) >= threshold
    n_all, n_hem = int((y == 1).sum()), int((y == 0).sum())
    sensitivity = float(called[y == 1].sum() / n_all) if n_all else float("nan")
    specificity = float((~called[y == 0]).sum() / n_hem) if n_hem else float("nan")
    return sensitivity, specificity


@dataclass(frozen=True)
class OperatingPoint:
    """A decision threshold on calibrated P(ALL) and where it came from, with its validation rates."""

    threshold: float
    target: str | None = None  # "sensitivity" or "specificity"; None: the default threshold
    target_value: float | None = None
    val_sensitivity: float = float("nan")
    val_specificity: float = float("nan")
    warning: str | None = None  # met only by calling every validation cell one class

    def describe(self) -> str:
        """`sensitivity >= 0.95 on validation`, or `default threshold 0.5`."""
        if self.target is None:
            return f"default threshold {self.threshold:g}"
        return f"{self.target} >= {self.target_value:g} on validation"


def _needed(target: float, count: int) -> int:
    # ceil(target x count) with a little slack: 0.95 x 20 is 19.000000000000004 in floating point.
    return min(count, max(1, math.ceil(target * count - 1e-9)))


def choose_threshold(prob_all: np.ndarray, labels: np.ndarray, *, sensitivity: float | None = None,
                     specificity: float | None = None) -> OperatingPoint:
    """The operating point for one target (or neither: the default threshold 0.5), chosen on these cells."""
    if sensitivity is not None and specificity is not None:
        raise ValueError("give a sensitivity or a specificity target, not both")
    p, y = np.asarray(prob_all, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if sensitivity is None and specificity is None:
        return _point(DEFAULT_THRESHOLD, None, None, p, y)
    target, value = ("sensitivity", sensitivity) if sensitivity is not None else ("specificity", specificity)
    assert value is not None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"a {target} target must lie in (0, 1], not {value:g}")
    own = p[y == (1 if target == "sensitivity" else 0)]
    if len(own) == 0:
        cls = "ALL" if target == "sensitivity" else "hem"
        raise TargetUnmetError(f"{target} >= {value:g} cannot be met: the validation side has no {cls} cells")
    k = _needed(value, len(own))
    if target == "sensitivity":  # the k-th highest P(ALL) of an ALL cell: the k highest are called ALL
        threshold = float(np.sort(own)[::-1][k - 1])
    else:  # just above the k-th lowest P(ALL) of a hem cell: the k lowest are called hem
        threshold = float(np.nextafter(np.sort(own)[k - 1], np.inf))
    return _point(threshold, target, value, p, y)


def _point(threshold: float, target: str | None, value: float | None, p: np.ndarray, y: np.ndarray
           ) -> OperatingPoint:
    sens, spec = sensitivity_specificity(y, p, threshold)
    warning = None
    if target == "sensitivity" and spec == 0.0:
        warning = "met only by calling every validation cell ALL (specificity 0 there)"
    elif target == "specificity" and sens == 0.0:
        warning = "met only by calling every validation cell hem (sensitivity 0 there)"
    return OperatingPoint(threshold, target, value, sens, spec, warning)


def rates_with_intervals(labels: np.ndarray, prob_all: np.ndarray, subjects: np.ndarray, threshold: float,
                         resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, float]:
    """Sensitivity and specificity at `threshold`, each with its 95% interval from the patient bootstrap of
    `intervals.py` (widened to hold the estimate, as `metrics_with_intervals` does)."""
    sens, spec = sensitivity_specificity(labels, prob_all, threshold)
    bounds = patient_bootstrap(np.asarray(labels), np.asarray(prob_all, dtype=np.float64), np.asarray(subjects),
                               resamples, seed, threshold=threshold)
    out: dict[str, float] = {}
    for name, value in (("sensitivity", sens), ("specificity", spec)):
        low, high = bounds[name]
        out[name] = value
        out[f"{name}_ci95_low"] = min(low, value) if math.isfinite(value) else float("nan")
        out[f"{name}_ci95_high"] = max(high, value) if math.isfinite(value) else float("nan")
    return out


def cell_scores_payload(fit: TemperatureFit, fitted_on: str, val_prob: np.ndarray, val_labels: np.ndarray,
                        test_prob: np.ndarray, test_labels: np.ndarray, test_subjects: np.ndarray
                        ) -> dict[str, Any]:
    """What the test side leaves on the trial run (CELL_SCORES_FILE) for promote to choose an operating point:
    P(ALL) as trained (T = 1) of every validation and test cell, with labels (and test subjects, for the patient
    bootstrap), and the fitted temperature."""
    return {"temperature": fit.temperature, "temperature_at_bound": fit.at_bound,
            "fitted_on": fitted_on,
            "validation": {"p_all": _rounded(val_prob), "labels": np.asarray(val_labels).astype(int).tolist()},
            "test": {"p_all": _rounded(test_prob), "labels": np.asarray(test_labels).astype(int).tolist(),
                     "subjects": np.asarray(test_subjects).astype(str).tolist()}}


@dataclass(frozen=True)
class StoredDecision:
    """The temperature and threshold a loaded model decides with, as its registered version's tags give them."""

    temperature: float = 1.0
    threshold: float = DEFAULT_THRESHOLD
    operating_point: str = f"default threshold {DEFAULT_THRESHOLD:g}"
    calibration: str = "none"  # where the temperature was fitted, or "none"
    reason: str | None = None  # why there is no calibration, when there is none

    @classmethod
    def from_tags(cls, tags: dict[str, str], missing: str) -> StoredDecision:
        """From a version's tags; `missing` says why a version without them is uncalibrated."""
        if TAG_TEMPERATURE not in tags and TAG_THRESHOLD not in tags:
            return cls(reason=missing)
        temperature = float(tags.get(TAG_TEMPERATURE, 1.0))
        threshold = float(tags.get(TAG_THRESHOLD, DEFAULT_THRESHOLD))
        if not (math.isfinite(temperature) and temperature > 0 and math.isfinite(threshold)):
            raise ValueError(f"the version's tags hold temperature {temperature!r} and threshold {threshold!r}")
        calibration = tags.get(TAG_CALIBRATION, "none")
        return cls(temperature, threshold, tags.get(TAG_OPERATING_POINT, f"threshold {threshold:g}"), calibration,
                   None if calibration != "none" else "the trial had no validation scores")

    @property
    def calibrated(self) -> bool:
        return self.calibration != "none"

    def line(self) -> str:
        """`P(ALL) calibrated with temperature 1.43 (fitted on validation); called ALL at P(ALL) >= 0.3100
        (sensitivity >= 0.95 on validation)`."""
        if self.calibrated:
            where = self.calibration.split(" (")[0]
            calibration = f"P(ALL) calibrated with temperature {self.temperature:.3g} (fitted on {where})"
        else:
            calibration = f"P(ALL) uncalibrated, as trained ({self.reason or 'no calibration stored'})"
        return f"{calibration}; called ALL at P(ALL) >= {self.threshold:.4g} ({self.operating_point})"

    def to_json(self) -> dict[str, Any]:
        return {"calibrated": self.calibrated, "temperature": self.temperature, "calibration": self.calibration,
                "threshold": self.threshold, "operating_point": self.operating_point, "reason": self.reason}


def _rounded(prob_all: np.ndarray) -> list[float]:
    # 8 decimals: finer than the clip of logit_scores, and a tenth of the JSON of full float64 text.
    return [round(float(p), 8) for p in np.asarray(prob_all, dtype=np.float64)]
