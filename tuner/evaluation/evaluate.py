"""`leukotune evaluate`: a registered model's metrics on any labelled C-NMC-layout folder (an external cohort, the
preliminary test set), read and fed through the one inference path as `leukotune predict` does, each cell called at
the model's own threshold: per cell with intervals by patient, and per patient (`patients.py`: the patient's call,
with exact intervals, and a table of patients). A metric the cohort cannot define is reported as undefined, with the
reason, never as 0 or a bare nan."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from leukotune.data import load_manifest
from leukotune.tuner.evaluation.inference import TrainedModel
from leukotune.tuner.evaluation.intervals import CI_METRICS, metrics_with_intervals
from leukotune.tuner.evaluation.patients import SCORE, judge_patients
from leukotune.tuner.evaluation.predict import predict_files
from leukotune.tuner.metrics import format_value, undefined_metrics

# The lines a terminal reader gets, in order; --json has every metric.
SHOWN = (*CI_METRICS, "accuracy", "f1_macro", "precision_all", "precision_hem", "loss")
PATIENT_SHOWN = (("sensitivity", "all"), ("specificity", "hem"), ("roc_auc", None))
_READABLE = {"all": "ALL patients", "hem": "normal patients"}


def evaluate_folder(model: TrainedModel, root: str | Path, batch_size: int = 32, seed: int = 0) -> dict[str, Any]:
    """Classify every labelled cell under `root`; files the layout or the decoder cannot use are listed with their
    reason and left out. On the rest, cells called ALL at `model.threshold`: the cell metrics with 95% intervals
    (bootstrap over subjects), the patient metrics with exact intervals and the table of patients; NaN where a
    metric is undefined, its reason under `undefined`."""
    manifest = load_manifest(root)
    rows = predict_files(model, [(Path(r.path), None) for r in manifest.records], batch_size=batch_size)
    skipped = [{"path": s.path, "reason": s.reason} for s in manifest.skipped]
    skipped += [{"path": row.file, "reason": row.error} for row in rows if row.error is not None]
    kept = [(record, row) for record, row in zip(manifest.records, rows) if row.error is None]
    result: dict[str, Any] = {"data": manifest.root, "cells": len(kept), "skipped": skipped,
                              "threshold": model.threshold, "temperature": model.temperature,
                              "metrics": {}, "undefined": {}}
    if kept:
        labels = np.array([record.label for record, _ in kept])
        probs = np.array([row.p_all for _, row in kept])
        subjects = np.array([record.subject for record, _ in kept])
        metrics = metrics_with_intervals(labels, probs, subjects, prefix="", seed=seed, threshold=model.threshold)
        result.update(metrics=metrics, undefined=undefined_metrics(metrics), subjects=metrics["subjects"])
        patients = judge_patients(labels, probs, subjects, model.threshold)
        result["patients"] = {"score": SCORE, "metrics": patients.metrics, "undefined": patients.undefined,
                              "table": [row.to_dict() for row in patients.rows]}
    return result


def json_safe(value: Any) -> Any:
    """NaN (an undefined metric: its reason is beside it, under `undefined`) becomes null: strict JSON has no NaN."""
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
    lines.append(f"called ALL at P(ALL) >= {result['threshold']:.4f} (the model's threshold; P(ALL) at temperature "
                 f"{result['temperature']:.4f})")
    lines.append(f"cells\n  {'metric':<20}{'value':<9}95% CI (bootstrap over patients)")
    for name in SHOWN:
        lines.append(_metric_line(name, metrics, result["undefined"], _bootstrap_interval(metrics, name)))
    cm = [[metrics[f"cm_true_{t}_pred_{p}"] for p in ("hem", "all")] for t in ("hem", "all")]
    lines.append(f"  confusion (rows true hem/all, cols predicted hem/all): {cm}")
    if "patients" in result:
        lines += format_patients(result["patients"], result["threshold"])
    return [line.rstrip() for line in lines]


def format_patients(patients: dict[str, Any], threshold: float) -> list[str]:
    """The table of patients (a miss marked), then the patient metrics with their exact intervals."""
    table, metrics = patients["table"], patients["metrics"]
    width = max([len(row["subject"]) for row in table] + [len("subject")])
    lines = [f"patients: score = {patients['score']}, called ALL at >= {threshold:.4f}",
             f"  {'subject':<{width}}  cells  score   called ALL  call  truth"]
    for row in table:
        share = f"{round(row['called_all'] * row['cells'])} of {row['cells']}"
        lines.append(f"  {row['subject']:<{width}}  {row['cells']:<5}  {row['score']:.4f}  {share:<10}  "
                     f"{row['call']:<4}  {row['truth']:<5}{'' if row['call'] == row['truth'] else '  miss'}")
    lines.append(f"  {'metric':<20}{'value':<9}95% CI (exact binomial, Clopper-Pearson)")
    for name, cls in PATIENT_SHOWN:
        key = f"patient_{name}"
        if cls is None:
            note = "no interval computed"
        else:
            right = metrics[f"patient_cm_true_{cls}_pred_{cls}"]
            total = metrics[f"patients_{cls}"]
            note = (f"{metrics[f'{key}_ci95_low']:.4f} - {metrics[f'{key}_ci95_high']:.4f}  "
                    f"({right} of {total} {_READABLE[cls]} called {'ALL' if cls == 'all' else 'normal'})")
        lines.append(_metric_line(name, metrics, patients["undefined"], note, key=key))
    return lines


def _bootstrap_interval(metrics: dict[str, Any], name: str) -> str:
    low, high = metrics.get(f"{name}_ci95_low"), metrics.get(f"{name}_ci95_high")
    return f"{low:.4f} - {high:.4f}" if low is not None else ""


def _metric_line(name: str, metrics: dict[str, Any], undefined: dict[str, str], interval: str,
                 key: str | None = None) -> str:
    """`name  value  interval`, or `name  undefined (reason)` with no interval when the cohort cannot define it."""
    key = key or name
    value = metrics[key]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"  {name:<20}{format_value(value, undefined.get(key))}"
    return f"  {name:<20}{format_value(value):<9}{interval}"
