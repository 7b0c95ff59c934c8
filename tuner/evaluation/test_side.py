"""Scoring a trial's best checkpoint on its study's test side: what the Ray task of `tuner/tune/holdout.py` runs.
Kept apart from the driver's modules (MLflow, plots) so the task's process imports only torch, the data and the
models.

Besides the test metrics, the task calibrates the model on its validation side (`calibration.py`): the temperature,
ECE and Brier score on test before and after, and every validation and test cell's P(ALL) for promote to choose an
operating point. A cross-validated trial's model is the ensemble of its fold models, and each of them trained on
the other folds' patients, so no validation cell is unseen by the ensemble: its validation scores are out of fold
instead (each fold's cells scored by the fold model that never trained on them). Those cells are honest; what is
approximate is that the ensemble, an average of the fold models, is smoother than any one of them, so a temperature
and threshold fitted on single fold models fit it roughly (its test ECE before and after says how well).

At the trial's threshold (0.5 until promote chooses one) on calibrated P(ALL), the task also judges the test side
per patient (`patients.py`) and draws Grad-CAM maps of a few test cells with their model-randomisation check
(`saliency.py`): the task holds the model and the decoded cells, and what travels back is small (at most 8 cells
and their maps). It names the software that scored (`software.py`), recorded with the study rather than guessed at
promote.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import ray
import torch

from leukotune.data import PreparedData
from leukotune.tuner.config import build_study
from leukotune.tuner.evaluation.calibration import calibration_metrics, cell_scores_payload, fit_temperature
from leukotune.tuner.evaluation.calibration import calibrate
from leukotune.tuner.evaluation.inference import TrainedModel, probabilities
from leukotune.tuner.evaluation.intervals import metrics_with_intervals
from leukotune.tuner.evaluation.patients import judge_patients
from leukotune.tuner.evaluation.saliency import SaliencyReport, saliency_report
from leukotune.tuner.evaluation.software import software_versions
from leukotune.tuner.process import configure_process
from leukotune.tuner.train.data_source import prepare_study_data
from leukotune.tuner.train.ray_sessions import assigned_device

BATCH_SIZE = 128
# The key of a scored trial's per-cell P(ALL) (calibration.cell_scores_payload), beside its flat metrics: the
# driver takes it off, logs it as an artifact and logs the rest as metrics.
CELL_SCORES = "cell_scores"
# Likewise: the patients (a PatientResults, whose metrics are also among the flat ones), the saliency report (a
# SaliencyReport, or the one-line reason it could not be drawn) and the software versions.
PATIENTS = "patients"
SALIENCY = "saliency"
SOFTWARE = "software"
RECORDS = (CELL_SCORES, PATIENTS, SALIENCY, SOFTWARE)
VALIDATION_SIDE = "validation"
OUT_OF_FOLD = "out-of-fold validation (each fold's cells scored by the fold model that did not train on them)"


def score_test_side(best: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Rebuild a trial's best model and score the test side of its study's data, preprocessed as it was trained
    (its own image size, colour, mean and std); metrics and patient-bootstrap intervals, prefixed `test_`; the
    calibration fitted on validation (`calibration_temperature`, `test_ece`/`test_ece_calibrated`,
    `test_brier`/`test_brier_calibrated`, `test_loss_calibrated`); the patient-level results at the trial's
    threshold on calibrated P(ALL) (`test_patient_*`, and the table under PATIENTS); the cells' P(ALL) under
    CELL_SCORES; the saliency report under SALIENCY; the software under SOFTWARE."""
    study = build_study(best["config"])  # the trial's config: its image size and colour, the study's data split
    data = prepare_study_data(study)
    if len(data.test_idx) == 0:
        raise ValueError("the study's data has no test side (data.test_fraction is 0 and no prelim test folder)")
    model = TrainedModel.from_checkpoint(best).to(_scoring_device())
    prob_all = probabilities(model, data.images, data.test_idx, batch_size=BATCH_SIZE)
    test_labels, test_subjects = data.labels[data.test_idx], data.subjects[data.test_idx]
    scores: dict[str, Any] = metrics_with_intervals(test_labels, prob_all, test_subjects, prefix="test_", seed=seed)
    val_idx, val_prob, fitted_on = validation_scores(model, data)
    fit = fit_temperature(val_prob, data.labels[val_idx])
    scores.update(calibration_metrics(fit, prob_all, test_labels))
    model = replace(model, temperature=fit.temperature)
    calibrated = calibrate(prob_all, fit.temperature)
    patients = judge_patients(test_labels, calibrated, test_subjects, model.threshold, prefix="test_")
    scores.update(patients.metrics)
    scores[PATIENTS] = patients
    scores[CELL_SCORES] = cell_scores_payload(fit, fitted_on, val_prob, data.labels[val_idx], prob_all,
                                              test_labels, test_subjects)
    scores[SALIENCY] = explain_test_cells(model, data, calibrated)
    scores[SOFTWARE] = software_versions()
    return scores


def explain_test_cells(model: TrainedModel, data: PreparedData, calibrated: np.ndarray) -> SaliencyReport | str:
    """Grad-CAM maps of a few right and wrong test cells of each class with their randomisation check, or why
    none could be drawn: a failure here costs the trial its maps, not its test numbers."""
    try:
        return saliency_report(model, data.images, data.labels[data.test_idx], calibrated, data.test_idx)
    except Exception as exc:  # noqa: BLE001 - reported by the driver with its trial
        return _one_line(exc)


def _one_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc) else ''}"


def validation_scores(model: TrainedModel, data: PreparedData) -> tuple[np.ndarray, np.ndarray, str]:
    """(indices, P(ALL) as trained, what they are) of the cells to calibrate on: the validation side, or for a
    cross-validated ensemble each fold's cells scored by its own fold model (see the module's docstring)."""
    if not data.folds:
        return data.val_idx, probabilities(model, data.images, data.val_idx, batch_size=BATCH_SIZE), VALIDATION_SIDE
    members = list(getattr(model.network, "members", []))
    if len(members) != len(data.folds):
        raise ValueError(f"a cross-validated trial's model has {len(members)} fold models for {len(data.folds)} "
                         f"folds")
    probs = [probabilities(replace(model, network=member), data.images, fold, batch_size=BATCH_SIZE)
             for member, fold in zip(members, data.folds)]
    return np.concatenate(data.folds), np.concatenate(probs), OUT_OF_FOLD


def _scoring_device() -> torch.device:
    # As a Ray task: the GPU Ray gave it, checked like a trial's; in a plain process: whatever is here.
    if ray.is_initialized():
        return assigned_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def score_checkpoints(bests: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any] | str]:
    """Score each best checkpoint in turn; a failure comes back as its one-line reason, so one bad trial does not
    cost the others their numbers. One task for all: each extra worker process would import torch again."""
    configure_process("worker")
    scored: list[dict[str, Any] | str] = []
    for best in bests:
        try:
            scored.append(score_test_side(best, seed=seed))
        except Exception as exc:  # noqa: BLE001 - reported with its trial by the driver
            scored.append(_one_line(exc))
    return scored
