"""What a promoted model carries besides its weights: the test gate, its test numbers as tags, and a model card.

Selection ranks trials by validation (that is what selection means), but the best of many validation scores is
flattered by the choosing; the bar a model must clear, and the numbers a reader sees, are the test side's: subjects
no trial trained or was selected on, with 95% intervals from a bootstrap over patients.
"""
from __future__ import annotations

import json
import math
import tempfile
from typing import TYPE_CHECKING, Any

from leukotune.tuner.evaluation.intervals import CI_METRICS
from leukotune.tuner.tracking.client import PARENT_TAG, TAG_FINGERPRINT, TAG_STUDY, TAG_TRIAL

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from leukotune.tuner.registry.operating_point import Decision

MODEL_CARD_FILE = "model_card.md"
DESCRIPTION_LIMIT = 4900  # the registry stores at most 5,000 characters of a version's description
# The numbers a card and the version tags show, in this order.
CARD_METRICS = (*CI_METRICS, "accuracy", "f1_macro", "precision_all", "precision_hem")


def missing_test_reason(run: Run, gate_metric: str, ranked_by: str) -> str | None:
    """Why the run cannot be judged on `gate_metric`, or None when it has a finite value."""
    value = run.data.metrics.get(gate_metric)
    if value is not None and math.isfinite(value):
        return None
    name = run.info.run_name or run.info.run_id
    return (f"{name} ({run.info.run_id}) is the best by {ranked_by} but has no {gate_metric}: it was not "
            f"evaluated on the test side (the study ran without one, was interrupted, or predates test "
            f"evaluation); rerun the study with data.test_fraction > 0, or choose --gate-metric")


def held_out_tags(run: Run) -> dict[str, str]:
    """`test.<metric>` tags (with `_ci95_low`/`_ci95_high`) from the run's test evaluation."""
    return {f"test.{key[len('test_'):]}": f"{value:.6g}" for key, value in sorted(run.data.metrics.items())
            if key.startswith("test_")}


def _download_json(client: MlflowClient, run_id: str, path: str) -> Any:
    try:
        with tempfile.TemporaryDirectory(prefix="leukotune-card-") as tmp:
            with open(client.download_artifacts(run_id, path, tmp)) as handle:
                return json.load(handle)
    except Exception:  # noqa: BLE001 - a card says "unknown" rather than failing a promotion over a missing file
        return None


def model_card(client: MlflowClient, run: Run, model_name: str, ranked_by: str) -> str:
    """Markdown: data fingerprint, subjects per side, split, validation vs test with intervals, preprocessing, the
    study and trial, intended use and limits."""
    tags, metrics = run.data.tags, run.data.metrics
    parent = client.get_run(tags[PARENT_TAG]) if tags.get(PARENT_TAG) else None
    params = parent.data.params if parent else {}
    sides = (_download_json(client, parent.info.run_id, "data/split.json") if parent else None) or {}
    best = _download_json(client, run.info.run_id, "best_epoch.json") or {}
    fingerprint = tags.get(TAG_FINGERPRINT) or (parent.data.tags.get(TAG_FINGERPRINT) if parent else None)
    lines = [f"# {model_name}: ALL vs hem single-cell classifier", "",
             f"Study `{tags.get(TAG_STUDY, 'unknown')}`, trial `{tags.get(TAG_TRIAL, 'unknown')}`, run "
             f"`{run.info.run_id}`; chosen as the best by `{ranked_by}` (validation).", "",
             *_cross_validation_lines(metrics, ranked_by),
             "## Data", "",
             f"- fingerprint `{fingerprint or 'unknown'}`; validation split `{params.get('data.split_method', '?')}`;"
             f" test side from `{params.get('data.test_source', '?')}` (always subject-disjoint)",
             *_side_lines(params, sides), "",
             "## Validation vs test", "",
             "| metric | validation (best epoch) | test | test 95% CI (bootstrap over patients) |",
             "| --- | --- | --- | --- |",
             *_metric_rows(best.get("metrics", {}), metrics), "",
             _preprocessing_line(best.get("preprocessing")), "",
             "## Intended use and limits", "",
             "- Research use only; not a medical device and not validated for clinical decisions.",
             "- Cell-level classification of single segmented B-lymphoid cell images (C-NMC 2019 style). It is not a "
             "patient-level diagnosis: a patient's status is not the vote of their cells without further validation.",
             "- The validation number is the best of many trials and reads high; quote the test number with its "
             "interval. Few test patients make a wide interval; a class with one test subject shows no between-"
             "patient spread for that class (its interval is too narrow).",
             "- Images from another lab, stain or scanner may score very differently: check with "
             "`leukotune evaluate` on a labelled folder of your own before relying on it."]
    return "\n".join(lines) + "\n"


def _cross_validation_lines(metrics: dict[str, float], ranked_by: str) -> list[str]:
    folds = int(metrics.get("cv_folds") or 0)
    if not folds:
        return []
    spread = metrics.get(f"{ranked_by}_std")
    spread_text = f" (spread over the folds: {spread:.4f})" if spread is not None else ""
    return [f"Selected by {folds}-fold cross-validation over the non-test patients: the validation numbers below "
            f"are the mean of the {folds} folds{spread_text}. The model is the ensemble of the {folds} fold models "
            f"(their class probabilities averaged); each saw the patients of the other folds.", ""]


def _side_lines(params: dict[str, str], sides: dict[str, list[str]]) -> list[str]:
    lines = []
    for side in ("train", "val", "test"):
        cells = ", ".join(f"{params.get(f'data.{side}_{name}_cells', '?')} {name.upper() if name == 'all' else name}"
                          for name in ("all", "hem"))
        subjects = sides.get(side)
        listed = f"{len(subjects)} subjects" if subjects is not None else "subjects unknown"
        if subjects and side == "test":
            listed += f" ({', '.join(subjects[:40])}{', ...' if len(subjects) > 40 else ''})"
        lines.append(f"- {side}: {cells} cells; {listed}")
    return lines


def _metric_rows(val: dict[str, float], metrics: dict[str, float]) -> list[str]:
    aliases = {"sensitivity": "recall_all", "specificity": "recall_hem"}
    spelled = {"sensitivity": "sensitivity (recall of ALL)", "specificity": "specificity (recall of hem)"}

    def text(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"

    rows = []
    for name in CARD_METRICS:
        low, high = metrics.get(f"test_{name}_ci95_low"), metrics.get(f"test_{name}_ci95_high")
        interval = f"{text(low)} - {text(high)}" if low is not None else "-"
        label = spelled.get(name, name)
        rows.append(f"| {label} | {text(val.get('val_' + aliases.get(name, name)))} | "
                    f"{text(metrics.get('test_' + name))} | {interval} |")
    return rows


def _preprocessing_line(prep: dict[str, Any] | None) -> str:
    if not prep:
        return "Preprocessing: unknown (no best_epoch.json on the run)."
    return (f"Preprocessing (applied by `leukotune predict`/`evaluate`): {prep.get('image_size')} px, "
            f"{prep.get('color')}, normalised with mean {_rounded(prep.get('mean'))} and std "
            f"{_rounded(prep.get('std'))}.")


def _rounded(values: Any) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]" if isinstance(values, list) else str(values)


def version_description(card: str) -> str:
    """The card as the version's description, cut to what the registry stores (the full card is an artifact)."""
    if len(card) <= DESCRIPTION_LIMIT:
        return card
    return card[:DESCRIPTION_LIMIT].rsplit("\n", 1)[0] + f"\n\n(cut; the full card is the run's {MODEL_CARD_FILE})\n"


def calibration_card_lines(decision: Decision, metrics: dict[str, float]) -> list[str]:
    """The card's "Calibration and operating point" section: the temperature and where it was fitted, test ECE and
    Brier score before and after, the threshold with its target, and test sensitivity and specificity there with
    their patient-bootstrap intervals."""
    def text(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"

    lines = ["## Calibration and operating point", ""]
    if decision.calibrated:
        lines.append(f"- P(ALL) is calibrated by temperature scaling: the logits are divided by "
                     f"{decision.temperature:.4f}, fitted (minimum negative log-likelihood) on {decision.calibration},"
                     f" never on test.")
        if "test_ece" in metrics:
            lines.append(f"- On test, expected calibration error (10 equal-width bins of P(ALL)) "
                         f"{text(metrics.get('test_ece'))} as trained, {text(metrics.get('test_ece_calibrated'))} "
                         f"calibrated; Brier score {text(metrics.get('test_brier'))} -> "
                         f"{text(metrics.get('test_brier_calibrated'))}.")
        if decision.calibration.startswith("out-of-fold"):
            lines.append("- The model is an ensemble of fold models, and each validation cell was scored by the fold "
                         "model that did not train on it; the ensemble is smoother than any one fold model, so its "
                         "calibration and threshold are approximate (the test numbers above say how close).")
    else:
        lines.append("- P(ALL) is not calibrated (temperature 1.0): the trial has no validation scores.")
    point = decision.point
    lines.append(f"- A cell is called ALL at calibrated P(ALL) >= {point.threshold:.4f} ({point.describe()}: "
                 f"sensitivity {text(point.val_sensitivity)}, specificity {text(point.val_specificity)} there).")
    if point.warning:
        lines.append(f"- The target is {point.warning}.")
    test = decision.test
    if test:
        lines.append("- At that threshold on test: " + "; ".join(
            f"{name} {text(test.get(name))} (95% CI by patient {text(test.get(f'{name}_ci95_low'))} - "
            f"{text(test.get(f'{name}_ci95_high'))})" for name in ("sensitivity", "specificity")) + ".")
    return lines
