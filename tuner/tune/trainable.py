"""What runs inside each Tune trial, and what one trial holds: the loop inline, or a nested TorchTrainer."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ray import tune

from leukotune.tuner.config import StudyConfig, build_study, replace_train
from leukotune.tuner.train.loop import run_training
from leukotune.tuner.train.ray_train import quiet_worker_process, train_in_tune_trial
from leukotune.tuner.train.sessions import TuneSession


def tune_trial(config: dict[str, Any], study_dict: dict[str, Any]) -> None:
    """One Tune trial: the study with this trial's sampled parameters, trained inline or via a nested TorchTrainer."""
    study = replace_train(build_study(study_dict), config)
    quiet_worker_process()
    torch.set_num_threads(study.resources.cpus_per_worker)
    if runtime_of(study) == "ray_train":
        context = tune.get_context()
        train_in_tune_trial(study, context.get_trial_id(), Path(study_dict["storage_path"]) / "train-runs")
        return
    run_training(study, TuneSession(study.resources.use_gpu), log=lambda _msg: None)


def reuse_actors(study: StudyConfig) -> bool:
    # An inline trial's actor is just a warm Python with torch imported: handing it to the next trial saves the
    # process start and imports (seconds per trial). A ray_train trial's actor holds nothing worth keeping.
    return runtime_of(study) == "inline"


def runtime_of(study: StudyConfig) -> str:
    runtime = study.resources.trial_runtime
    if runtime == "auto":
        return "ray_train" if study.resources.workers > 1 else "inline"
    return runtime


# ray_train trials: the Tune trial actor only waits on its TorchTrainer (whose controller takes 0 CPUs); Tune
# refuses a zero request, so it holds this sliver, and concurrency counts it so workers always find their CPUs.
TRIAL_DRIVER_CPU = 0.01


def trial_resources(study: StudyConfig, gpu: bool) -> dict[str, float]:
    """What one trial's own actor holds. Inline: the loop runs there. ray_train: the workers hold the rest."""
    if runtime_of(study) == "ray_train":
        return {"CPU": TRIAL_DRIVER_CPU}
    # gpus_per_trial < 1 packs several inline trials on one GPU (Ray counts the fractions).
    return {"CPU": study.resources.cpus_per_worker, **({"GPU": study.resources.gpus_per_trial} if gpu else {})}
