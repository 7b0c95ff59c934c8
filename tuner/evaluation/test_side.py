"""Scoring a trial's best checkpoint on its study's test side: what the Ray task of `tuner/tune/holdout.py` runs.
Kept apart from the driver's modules (MLflow, plots) so the task's process imports only torch, the data and the
models."""
from __future__ import annotations

from typing import Any

import ray
import torch

from leukotune.tuner.config import build_study
from leukotune.tuner.evaluation.inference import TrainedModel, probabilities
from leukotune.tuner.evaluation.intervals import metrics_with_intervals
from leukotune.tuner.process import configure_process
from leukotune.tuner.train.data_source import prepare_study_data
from leukotune.tuner.train.ray_sessions import assigned_device

BATCH_SIZE = 128


def score_test_side(best: dict[str, Any], seed: int = 0) -> dict[str, float]:
    """Rebuild a trial's best model and score the test side of its study's data, preprocessed as it was trained
    (its own image size, colour, mean and std); metrics and patient-bootstrap intervals, prefixed `test_`."""
    study = build_study(best["config"])  # the trial's config: its image size and colour, the study's data split
    data = prepare_study_data(study)
    if len(data.test_idx) == 0:
        raise ValueError("the study's data has no test side (data.test_fraction is 0 and no prelim test folder)")
    model = TrainedModel.from_checkpoint(best).to(_scoring_device())
    prob_all = probabilities(model, data.images, data.test_idx, batch_size=BATCH_SIZE)
    return metrics_with_intervals(data.labels[data.test_idx], prob_all, data.subjects[data.test_idx],
                                  prefix="test_", seed=seed)


def _scoring_device() -> torch.device:
    # As a Ray task: the GPU Ray gave it, checked like a trial's; in a plain process: whatever is here.
    if ray.is_initialized():
        return assigned_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def score_checkpoints(bests: list[dict[str, Any]], seed: int = 0) -> list[dict[str, float] | str]:
    """Score each best checkpoint in turn; a failure comes back as its one-line reason, so one bad trial does not
    cost the others their numbers. One task for all: each extra worker process would import torch again."""
    configure_process("worker")
    scored: list[dict[str, float] | str] = []
    for best in bests:
        try:
            scored.append(score_test_side(best, seed=seed))
        except Exception as exc:  # noqa: BLE001 - reported with its trial by the driver
            scored.append(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc) else ''}")
    return scored
