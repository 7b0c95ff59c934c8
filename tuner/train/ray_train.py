"""Ray Train: run the shared training loop in TorchTrainer workers (DDP over `resources.workers`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from leukotune.tuner.cluster.trial_resources import TrialResources
from leukotune.tuner.config import StudyConfig, build_study
from leukotune.tuner.process import configure_process
from leukotune.tuner.train.loop import run_training
from leukotune.tuner.train.ray_sessions import TrainSession


def worker_loop(config: dict[str, Any]) -> None:
    """Entry point on every Ray Train worker: rebuild the typed config, then run the one training loop."""
    configure_process("worker")
    study = build_study(config["study"])
    torch.set_num_threads(TrialResources.from_dict(config["resources"]).cpus_per_worker)
    session = TrainSession()
    run_training(study, session, log=print if session.world_rank == 0 else (lambda _msg: None))


def make_trainer(study: StudyConfig, resources: TrialResources, name: str, storage_path: Path,
                 callbacks: list | None = None):
    """A TorchTrainer for one run of `study` on `resources`: its failure policy and checkpoint retention."""
    gpu = resources.uses_gpu
    scaling = ScalingConfig(num_workers=resources.workers, use_gpu=gpu,
                            resources_per_worker=resources.worker_bundle())
    run_config = RunConfig(
        name=name, storage_path=str(storage_path), callbacks=callbacks or [],
        failure_config=FailureConfig(max_failures=study.resources.max_failures),
        # Keep two: if the newest is truncated by a crash mid-write, the one before it still restores.
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        # Ray Train's INFO lines repeat every metric of every report; our loop prints one line per epoch.
        logging_config=LoggingConfig(log_level="WARNING"),
    )
    # NCCL between GPUs, gloo between CPU workers (NCCL has no CPU transport).
    return TorchTrainer(worker_loop, train_loop_config={"study": study.to_dict(), "resources": resources.to_dict()}, scaling_config=scaling,
                        run_config=run_config, torch_config=TorchConfig(backend="nccl" if gpu else "gloo"))


def train_in_tune_trial(study: StudyConfig, resources: TrialResources, trial_name: str, storage_path: Path) -> None:
    """Inside a Tune trial: a nested TorchTrainer whose reports reach Tune (and ASHA) via TuneReportCallback."""
    trainer = make_trainer(study, resources, f"{trial_name}-train", storage_path, callbacks=[TuneReportCallback()])
    trainer.fit()
