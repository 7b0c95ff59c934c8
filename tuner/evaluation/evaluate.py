"""`leukotune evaluate`: a registered model's metrics, with intervals by patient, on any labelled C-NMC-layout
folder (an external cohort, the preliminary test set), read and fed through the one inference path as
`leukotune predict` does."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from leukotune.data import load_manifest
from leukotune.tuner.evaluation.inference import TrainedModel
from leukotune.tuner.evaluation.intervals import CI_METRICS, metrics_with_intervals
from leukotune.tuner.evaluation.predict import predict_files

# The lines a terminal reader gets, in order; --json has every metric.
SHOWN = (*CI_METRICS, "accuracy", "f1_macro", "precision_all", "precision_hem", "loss")


def evaluate_folder(model: TrainedModel, root: str | Path, batch_size: int = 32, seed: int = 0) -> dict[str, Any]:
    """Classify every labelled cell under `root`; files the layout or the decoder cannot use are listed with their
    reason and left out; metrics and 95% intervals (bootstrap over subjects) on the rest."""
    manifest = load_manifest(root)
    rows = predict_files(model, [(Path(r.path), None) for r in manifest.records], batch_size=batch_size)
    skipped = [{"path": s.path, "reason": s.reason} for s in manifest.skipped]
    skipped += [{"path": row.file, "reason": row.error} for row in rows if row.error is not None]
    kept = [(record, row) for record, row in zip(manifest.records, rows) if row.error is None]
    result: dict[str, Any] = {"data": manifest.root, "cells": len(kept), "skipped": skipped, "metrics": {}}
    if kept:
        labels = np.array([record.label for record, _ in kept])
        probs = np.array([row.p_all for _, row in kept])
        subjects = np.array([record.subject for record, _ in kept])
        result["metrics"] = metrics_with_intervals(labels, probs, subjects, prefix="", seed=seed)
        result["subjects"] = result["metrics"]["subjects"]
    return result


def json_safe(value: Any) -> Any:
    """NaN (ROC-AUC of a one-class folder) becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def format_report(result: dict[str, Any]) -> list[str]:
    metrics = result["metrics"]
    lines = [f"{result['cells']} cells of {result.get('subjects', 0)} subjects from {result['data']}; "
             f"{len(result['skipped'])} files skipped"]
    lines += [f"  skipped {item['path']}: {item['reason']}" for item in result["skipped"][:20]]
    if len(result["skipped"]) > 20:
        lines.append(f"  ... and {len(result['skipped']) - 20} more (see --json)")
    if not metrics:
        return lines
    lines.append(f"  {'metric':<20}{'value':<9}95% CI (bootstrap over patients)")
    for name in SHOWN:
        low, high = metrics.get(f"{name}_ci95_low"), metrics.get(f"{name}_ci95_high")
        interval = f"{low:.4f} - {high:.4f}" if low is not None else ""
        lines.append(f"  {name:<20}{metrics[name]:<9.4f}{interval}")
    cm = [[metrics[f"cm_true_{t}_pred_{p}"] for p in ("hem", "all")] for t in ("hem", "all")]
    lines.append(f"  confusion (rows true hem/all, cols predicted hem/all): {cm}")
    return lines
