"""Ray Train: run the shared training loop in TorchTrainer workers (DDP over `resources.workers`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tuner.config import StudyConfig, from_dict


def worker_loop(config: dict[str, Any]) -> None:
    """Entry point on every Ray Train worker: rebuild the typed config, then run the one training loop."""
    from tuner.sessions import TrainSession
    from tuner.trial import run_training

    from tuner.study import quiet_ray_loggers

    study = from_dict(StudyConfig, config["study"])
    quiet_ray_loggers()
    torch.set_num_threads(study.resources.cpus_per_worker)
    session = TrainSession()
    run_training(study, session, log=print if session.world_rank == 0 else (lambda _msg: None))


def use_gpu(study: StudyConfig) -> bool:
    import ray

    want = str(study.resources.use_gpu).lower()
    return want == "true" or (want == "auto" and ray.cluster_resources().get("GPU", 0) >= 1)


def make_trainer(study: StudyConfig, name: str, storage_path: Path, callbacks: list | None = None):
    """A TorchTrainer for one run of `study`: its resources, failure policy and checkpoint retention."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = study.resources
    gpu = use_gpu(study)
    scaling = ScalingConfig(num_workers=resources.workers, use_gpu=gpu,
                            resources_per_worker={"CPU": resources.cpus_per_worker, **({"GPU": 1} if gpu else {})})
    run_config = RunConfig(
        name=name, storage_path=str(storage_path), callbacks=callbacks or [],
        failure_config=FailureConfig(max_failures=resources.max_failures),
        # Keep two: if the newest is truncated by a crash mid-write, the one before it still restores.
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        # Ray Train's INFO lines repeat every metric of every report; our loop prints one line per epoch.
        logging_config=LoggingConfig(log_level="WARNING"),
    )
    return TorchTrainer(worker_loop, train_loop_config={"study": study.to_dict()}, scaling_config=scaling,
                        run_config=run_config)


def train_in_tune_trial(study: StudyConfig, trial_name: str, storage_path: Path) -> None:
    """Inside a Tune trial: a nested TorchTrainer whose reports reach Tune (and ASHA) via TuneReportCallback."""
    from ray.tune.integration.ray_train import TuneReportCallback

    trainer = make_trainer(study, f"{trial_name}-train", storage_path, callbacks=[TuneReportCallback()])
    trainer.fit()
