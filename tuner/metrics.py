"""Classification metrics for the two-class problem (hem=0, ALL=1), computed from labels and P(ALL); why a metric is
undefined on a cohort that lacks what it needs (NaN inside, "undefined (reason)" to a reader, a tag in MLflow); the
names the training loop reports and their test counterparts; and which of two values of a metric is better.

Plain numpy so the numbers can be checked by hand against a confusion matrix.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from leukotune.data import CLASS_NAMES

# Per-epoch values the training loop reports besides `val_<classification metric>`.
LOOP_METRICS = ("train_loss", "train_accuracy", "train_seconds", "train_samples_per_second", "val_loss",
                "val_seconds")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = 2) -> np.ndarray:
    """Rows are true classes, columns predicted: cm[i, j] counts true i predicted j."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den, NaN where den is 0: a rate over nothing is undefined, not 0."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney) statistic, ties averaged; NaN with one class."""
    y_true, score = np.asarray(y_true), np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int((y_true == 1).sum()), int((y_true == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    # Average ranks over ties so equal scores count half, as the AUC definition needs.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts):
        ranks[order[start:start + count]] = start + (count + 1) / 2.0
    return float((ranks[y_true == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(y_true: np.ndarray, prob_all: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, balanced accuracy, per-class/macro/weighted precision, recall, F1, ROC-AUC and the matrix cells, a
    cell called ALL when P(ALL) >= `threshold`.

    A metric that needs what the cells lack is NaN, never 0 (`undefined_reasons` says why): the recall and F1 of a
    class with no cells, the precision of a class no cell was called, balanced accuracy, macro averages and ROC-AUC
    without both classes. F1 of a present class is 2TP / (2TP + FP + FN), 0 when none of it was found; the weighted
    averages weigh the classes present by their cells, so weighted F1 is defined whenever there are cells.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = (np.asarray(prob_all) >= threshold).astype(np.int64)
    cm = confusion_matrix(y_true, y_pred)
    found, support, called = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    precision = _ratio(found, called)
    recall = _ratio(found, support)
    f1 = _ratio(2 * found, support + called)
    f1[support == 0] = np.nan
    metrics = {
        "accuracy": float(_ratio(np.trace(cm), cm.sum())),
        "balanced_accuracy": float(recall.mean()),
        "roc_auc": roc_auc(y_true, prob_all),
    }
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        for index, cls in enumerate(CLASS_NAMES):
            metrics[f"{name}_{cls}"] = float(values[index])
        metrics[f"{name}_macro"] = float(values.mean())
        metrics[f"{name}_weighted"] = _support_weighted(values, support)
    for (i, j), count in np.ndenumerate(cm):
        metrics[f"cm_true_{CLASS_NAMES[i]}_pred_{CLASS_NAMES[j]}"] = int(count)
    return metrics


def _support_weighted(values: np.ndarray, support: np.ndarray) -> float:
    """Mean over the classes present, weighted by their cells (a class with no cells weighs nothing, so its
    undefined value does not matter)."""
    present = support > 0
    if not present.any():
        return float("nan")
    return float((values[present] * support[present]).sum() / support[present].sum())


# How a reason names each class: the hem cells are the normal ones.
_READABLE = {"hem": "normal", "all": "ALL"}
# Aliases the held-out sides report beside the recalls.
_ALIASES = {"sensitivity": "recall_all", "specificity": "recall_hem"}
INTERVAL_SUFFIXES = ("_ci95_low", "_ci95_high")


def undefined_reasons(cm: np.ndarray, unit: str = "cells") -> dict[str, str]:
    """Why each metric of `classification_metrics` (and sensitivity, specificity) that is undefined on the cohort
    with confusion matrix `cm` is so, e.g. `{"specificity": "no normal cells in this cohort"}`; `unit` names what
    was counted (cells, patients). A metric absent from the answer is defined."""
    cm = np.asarray(cm, dtype=np.int64)
    support, called, total = cm.sum(axis=1), cm.sum(axis=0), int(cm.sum())
    if total == 0:
        names = ["accuracy", "balanced_accuracy", "roc_auc", *_ALIASES,
                 *(f"{m}_{c}" for m in ("precision", "recall", "f1") for c in (*CLASS_NAMES, "macro", "weighted"))]
        return {name: f"no {unit} in this cohort" for name in names}
    reasons: dict[str, str] = {}
    for index, cls in enumerate(CLASS_NAMES):
        if called[index] == 0:
            reasons[f"precision_{cls}"] = f"none of the {total} {unit} was called {_READABLE[cls]}"
    for index, cls in enumerate(CLASS_NAMES):
        if support[index] == 0:
            missing = f"no {_READABLE[cls]} {unit} in this cohort"
            reasons[f"recall_{cls}"] = reasons[f"f1_{cls}"] = missing
            both = f"{missing}, and it needs both classes"
            for name in ("balanced_accuracy", "roc_auc", "recall_macro", "f1_macro"):
                reasons.setdefault(name, both)
    for cls in CLASS_NAMES:
        if f"precision_{cls}" in reasons:
            reasons.setdefault("precision_macro", reasons[f"precision_{cls}"])
            if support[CLASS_NAMES.index(cls)] > 0:  # a class with no cells weighs nothing in the weighted mean
                reasons.setdefault("precision_weighted", reasons[f"precision_{cls}"])
    for alias, name in _ALIASES.items():
        if name in reasons:
            reasons[alias] = reasons[name]
    return reasons


def undefined_metrics(metrics: dict[str, Any], prefix: str = "", unit: str = "cells") -> dict[str, str]:
    """The reason for each undefined (NaN) entry of a flat metrics dict whose keys start with `prefix`, intervals
    (`_ci95_low/high`) included: read from its own `<prefix>cm_*` counts. A NaN the counts do not explain is left
    out (a mean over cross-validation folds, say)."""
    reasons = undefined_reasons(confusion_from_metrics(metrics, prefix), unit)
    out = {}
    for key, value in metrics.items():
        if not (key.startswith(prefix) and isinstance(value, float) and math.isnan(value)):
            continue
        name = key[len(prefix):]
        for suffix in INTERVAL_SUFFIXES:
            name = name.removesuffix(suffix)
        if name in reasons:
            out[key] = reasons[name]
    return out


TAG_UNDEFINED = "leukotune.undefined."


def split_undefined(metrics: dict[str, float], reasons: dict[str, str]) -> tuple[dict[str, float], dict[str, str]]:
    """What to log to MLflow: the defined metrics, and for each undefined one no number (a NaN would sort and chart
    as if it were one) but the tag `leukotune.undefined.<metric>` holding its reason."""
    defined = {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
    tags = {f"{TAG_UNDEFINED}{k}": reasons.get(k, "undefined on this data") for k in metrics if k not in defined}
    return defined, tags


def format_value(value: Any, reason: str | None = None, digits: int = 4) -> str:
    """A metric for a reader: the number, or `undefined (<reason>)` instead of a bare nan."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"undefined ({reason})" if reason else "undefined"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def confusion_from_metrics(metrics: dict[str, float], prefix: str = "val_") -> np.ndarray:
    """Rebuild the 2x2 matrix from the flat `cm_true_*_pred_*` entries of a metrics dict."""
    cm = np.zeros((2, 2), dtype=np.int64)
    for i, true_name in enumerate(CLASS_NAMES):
        for j, pred_name in enumerate(CLASS_NAMES):
            cm[i, j] = int(metrics.get(f"{prefix}cm_true_{true_name}_pred_{pred_name}", 0))
    return cm


@functools.cache
def reported_metric_names() -> tuple[str, ...]:
    """Every per-epoch metric the training loop reports: what `tune.metric` may name (cached: the schema asks on
    every study it validates, and preflight validates one per offline draw of the space)."""
    example = classification_metrics(np.array([0, 1]), np.array([0.2, 0.8]))
    return tuple(sorted({*LOOP_METRICS, *(f"val_{name}" for name in example)}))


def metric_on_test(metric: str) -> str:
    """The test counterpart of a validation metric (`val_f1_weighted` -> `test_f1_weighted`, `best_val_x` ->
    `test_x`); a training metric has none, so it is returned unchanged and will not be found."""
    name = metric.removeprefix("best_")
    return "test_" + name[len("val_"):] if name.startswith("val_") else name


def is_better(value: Any, best: Any, mode: str) -> bool:
    """Does `value` beat `best` under `mode` (max or min)? A missing or NaN value never does."""
    if not _is_number(value):
        return False
    return not _is_number(best) or (value > best if mode == "max" else value < best)


def ranking_key(value: Any, mode: str) -> tuple[bool, float]:
    """Sort key that puts the best value first under `mode` and missing or NaN values last."""
    if not _is_number(value):
        return (True, 0.0)
    return (False, -float(value) if mode == "max" else float(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
