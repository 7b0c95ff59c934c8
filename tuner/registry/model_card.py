"""What a promoted model carries besides its weights: the test gate, its test numbers as tags, and a model card
whose reporting checklist (TRIPOD+AI, CLAIM) is filled from the records by `checklist.py`.

Selection ranks trials by validation (that is what selection means), but the best of many validation scores is
flattered by the choosing; the bar a model must clear, and the numbers a reader sees, are the test side's: subjects
no trial trained or was selected on, with 95% intervals from a bootstrap over patients.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from leukotune.tuner.evaluation.intervals import CI_METRICS
from leukotune.tuner.registry.checklist import (
    Records,
    calibration_lines,
    checklist_lines,
    data_lines,
    failure_lines,
    number,
    patient_lines,
    read_records,
    saliency_lines,
    software_lines,
    test_patients,
    tuning_lines,
)
from leukotune.tuner.metrics import TAG_UNDEFINED
from leukotune.tuner.tracking.client import TAG_STUDY, TAG_TRIAL

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

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


def model_card(client: MlflowClient, run: Run, model_name: str, ranked_by: str, tags: dict[str, str],
               version: str | None = None) -> str:
    """Markdown, read from the records: what the model is and is not for, validation vs test with intervals,
    calibration and operating point (from the version's `tags`), patient-level results, then the reporting
    checklist's items (data and partitions, participant flow, tuning and selection, saliency, failure analysis,
    software) and what a person must still write. The registry keeps the first 4,900 characters as the version's
    description; the whole card is the run's `model_card.md`."""
    records = read_records(client, run)
    patients = test_patients(records, tags)
    sections = [_header_lines(records, model_name, ranked_by, version), _use_lines(),
                _results_lines(records, ranked_by), calibration_lines(records, tags), patient_lines(records, patients),
                data_lines(records), tuning_lines(records, ranked_by), saliency_lines(records),
                failure_lines(records, patients, tags), software_lines(records), checklist_lines()]
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def _header_lines(records: Records, model_name: str, ranked_by: str, version: str | None) -> list[str]:
    tags, run_id = records.run.data.tags, records.run.info.run_id
    registered = f"version {version} of `{model_name}`" if version else f"`{model_name}`"
    return [f"# {model_name}: ALL vs hem single-cell classifier", "",
            f"Study `{tags.get(TAG_STUDY, 'unknown')}`, trial `{tags.get(TAG_TRIAL, 'unknown')}`, run `{run_id}`; "
            f"chosen as the best by `{ranked_by}` (validation). Registered as {registered}.", "",
            f"Every number below is read from the MLflow records named beside it. The full card is the artifact "
            f"`runs:/{run_id}/{MODEL_CARD_FILE}`; `leukotune report --model models:/{model_name}/<version>` writes "
            f"it again from the records."]


def _use_lines() -> list[str]:
    return ["## Intended use and limits", "",
            "- Research use only; not a medical device and not validated for clinical decisions.",
            "- Cell-level classification of single segmented B-lymphoid cell images (C-NMC 2019 style). It is not a "
            "patient-level diagnosis: the patient-level results below pool one subject's cells, on few test "
            "subjects, and have not been validated as a diagnostic rule.",
            "- The validation number is the best of many trials and reads high; quote the test number with its "
            "interval. Few test patients make a wide interval; a class with one test subject shows no between-"
            "patient spread for that class (its interval is too narrow).",
            "- Images from another lab, stain or scanner may score very differently: check with "
            "`leukotune evaluate` on a labelled folder of your own before relying on it."]


def _results_lines(records: Records, ranked_by: str) -> list[str]:
    best = records.file("best_epoch")
    return ["## Validation vs test", "", *_cross_validation_lines(records.metrics, ranked_by),
            "| metric | validation (best epoch) | test | test 95% CI (bootstrap over patients) |",
            "| --- | --- | --- | --- |", *_metric_rows(best.get("metrics", {}), records.metrics,
                                                    records.run.data.tags), "",
            f"Cells called at P(ALL) >= 0.5 as trained (run metrics `test_*`, `best_epoch.json`); the version's "
            f"own threshold is in the next section. {_preprocessing_line(best.get('preprocessing'))}"]


def _cross_validation_lines(metrics: dict[str, float], ranked_by: str) -> list[str]:
    folds = int(metrics.get("cv_folds") or 0)
    if not folds:
        return []
    spread = metrics.get(f"{ranked_by}_std")
    spread_text = f" (spread over the folds: {spread:.4f})" if spread is not None else ""
    return [f"Selected by {folds}-fold cross-validation over the non-test patients: the validation numbers below "
            f"are the mean of the {folds} folds{spread_text}. The model is the ensemble of the {folds} fold models "
            f"(their class probabilities averaged); each saw the patients of the other folds.", ""]


def _metric_rows(val: dict[str, float], metrics: dict[str, float], tags: dict[str, str]) -> list[str]:
    """One row per CARD_METRICS entry; a test metric the test side could not define reads `undefined (reason)`,
    from its `leukotune.undefined.test_<metric>` tag."""
    aliases = {"sensitivity": "recall_all", "specificity": "recall_hem"}
    spelled = {"sensitivity": "sensitivity (recall of ALL)", "specificity": "specificity (recall of hem)"}
    rows = []
    for name in CARD_METRICS:
        low, high = metrics.get(f"test_{name}_ci95_low"), metrics.get(f"test_{name}_ci95_high")
        interval = f"{number(low)} - {number(high)}" if low is not None else "-"
        reason = tags.get(f"{TAG_UNDEFINED}test_{name}")
        test = f"undefined ({reason})" if reason else number(metrics.get("test_" + name))
        rows.append(f"| {spelled.get(name, name)} | {number(val.get('val_' + aliases.get(name, name)))} | "
                    f"{test} | {interval} |")
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
    """The card as the version's description, cut to what the registry stores (the full card is an artifact, named
    in the card's opening lines)."""
    if len(card) <= DESCRIPTION_LIMIT:
        return card
    return card[:DESCRIPTION_LIMIT].rsplit("\n", 1)[0] + f"\n\n(cut; the full card is the run's {MODEL_CARD_FILE})\n"


class NotAVersionError(ValueError):
    """`leukotune report --model` names something other than a registered version."""


def registered_version(client: MlflowClient, model_uri: str) -> ModelVersion:
    """The version behind `models:/NAME@alias` or `models:/NAME/N` (a report is of a registered version: only
    promote gives a model its threshold and card)."""
    name_part = model_uri.removeprefix("models:/")
    if name_part == model_uri or not name_part or ("@" not in name_part and "/" not in name_part):
        raise NotAVersionError(f"--model {model_uri!r}: give a registered version, models:/NAME@alias or "
                               f"models:/NAME/VERSION (a report is written for what `leukotune promote` registered)")
    if "@" in name_part:
        name, alias = name_part.rsplit("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, number_text = name_part.rsplit("/", 1)
    return client.get_model_version(name, number_text)


def version_card(client: MlflowClient, version: ModelVersion) -> str:
    """The card of a registered version, written again from its run's records and its own tags."""
    tags = dict(version.tags or {})
    return model_card(client, client.get_run(version.run_id), version.name,
                      tags.get("leukotune.metric", "unknown"), tags, str(version.version))
