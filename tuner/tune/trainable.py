"""What runs inside each Tune trial: the loop inline, or a nested TorchTrainer, on the resources decided for it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ray import tune

from leukotune.tuner.cluster.storage import verify_shared_storage
from leukotune.tuner.cluster.trial_resources import TrialResources
from leukotune.tuner.config import build_study, replace_train
from leukotune.tuner.train.loop import run_training
from leukotune.tuner.train.ray_sessions import TuneSession
from leukotune.tuner.process import configure_process
from leukotune.tuner.train.ray_train import train_in_tune_trial


def tune_trial(config: dict[str, Any], study_dict: dict[str, Any], resources: dict[str, Any],
               shared_marker: str | None = None) -> None:
    """One Tune trial: the study with this trial's sampled parameters, trained inline or via a nested TorchTrainer.

    `shared_marker`: a file the driver wrote in the study's folder; a trial on a node that cannot see it stops the
    study at once (its checkpoints would land where the driver never looks)."""
    configure_process("worker")
    study = replace_train(build_study(study_dict), config)
    storage = Path(study_dict["storage_path"])
    if shared_marker:
        verify_shared_storage(Path(shared_marker))
    decided = TrialResources.from_dict(resources)
    torch.set_num_threads(decided.cpus_per_worker)
    if decided.runtime == "ray_train":
        train_in_tune_trial(study, decided, tune.get_context().get_trial_id(), storage / "train-runs")
        return
    run_training(study, TuneSession(), log=lambda _msg: None)


def reuse_actors(resources: TrialResources) -> bool:
    # An inline trial's actor is just a warm Python with torch imported: handing it to the next trial saves the
    # process start and imports (seconds per trial). A ray_train trial's actor holds nothing worth keeping.
    return resources.runtime == "inline"
