"""Classification metrics for the two-class problem (hem=0, ALL=1), computed from labels and P(ALL); the names
the training loop reports and their test counterparts; and which of two values of a metric is better.

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


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


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
    """Accuracy, balanced accuracy, per-class/macro/weighted precision, recall, F1, ROC-AUC and the matrix cells."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = (np.asarray(prob_all) >= threshold).astype(np.int64)
    cm = confusion_matrix(y_true, y_pred)
    support = cm.sum(axis=1)
    precision = _safe_div(np.diag(cm), cm.sum(axis=0))
    recall = _safe_div(np.diag(cm), support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    weights = _safe_div(support, np.full_like(support, support.sum()))
    metrics = {
        "accuracy": float(_safe_div(np.trace(cm), cm.sum())),
        "balanced_accuracy": float(recall[support > 0].mean()) if (support > 0).any() else 0.0,
        "roc_auc": roc_auc(y_true, prob_all),
    }
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        for index, cls in enumerate(CLASS_NAMES):
            metrics[f"{name}_{cls}"] = float(values[index])
        metrics[f"{name}_macro"] = float(values.mean())
        metrics[f"{name}_weighted"] = float((values * weights).sum())
    for (i, j), count in np.ndenumerate(cm):
        metrics[f"cm_true_{CLASS_NAMES[i]}_pred_{CLASS_NAMES[j]}"] = int(count)
    return metrics


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
