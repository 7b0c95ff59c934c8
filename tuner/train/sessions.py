"""Sessions: how the training loop talks to where it runs (this process, a Tune trial, a Ray Train worker)."""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import ray.train
import ray.train.torch
import torch
from ray import tune
from torch import nn
from torch.utils.data import DataLoader


def wants_gpu(use_gpu: str, gpus_available: bool) -> bool:
    """`resources.use_gpu` (auto | true | false, checked by the schema) given whether GPUs are there."""
    return use_gpu == "true" or (use_gpu == "auto" and gpus_available)


def pick_device(use_gpu: str) -> torch.device:
    if use_gpu == "true" and not torch.cuda.is_available():
        raise RuntimeError("resources.use_gpu=true but no CUDA device is visible to this worker")
    return torch.device("cuda" if wants_gpu(use_gpu, torch.cuda.is_available()) else "cpu")


class LocalSession:
    """Plain process: keeps reports in memory; resumes from a given checkpoint folder. Used by tests and benches."""

    world_rank, world_size = 0, 1

    def __init__(self, use_gpu: str = "auto", resume_from: Path | None = None, keep_dir: Path | None = None):
        self._device = pick_device(use_gpu)
        self._resume_from = resume_from
        self._keep_dir = keep_dir
        self.reports: list[dict[str, Any]] = []

    def device(self) -> torch.device:
        return self._device

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        return loader

    @contextmanager
    def restore_dir(self) -> Iterator[Path | None]:
        yield self._resume_from

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None and self._keep_dir is not None:

            target = self._keep_dir / f"epoch_{metrics['epoch']:04d}"
            shutil.copytree(checkpoint_dir, target, dirs_exist_ok=True)


class TuneSession(LocalSession):
    """Inside a Tune function trainable: the loop owns the trial actor's CPUs/GPU directly."""

    def __init__(self, use_gpu: str = "auto"):
        super().__init__(use_gpu)

    def restore_dir(self):
        return _local_directory(tune.get_checkpoint())

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        tune.report(_tune_safe(metrics), checkpoint=checkpoint)


class TrainSession:
    """A Ray Train worker: DDP through prepare_model / prepare_data_loader, reports through ray.train."""

    def __init__(self):
        context = ray.train.get_context()
        self.world_rank = context.get_world_rank()
        self.world_size = context.get_world_size()

    def device(self) -> torch.device:
        return ray.train.torch.get_device()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(model)

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        return ray.train.torch.prepare_data_loader(loader, move_to_device=False)

    def restore_dir(self):
        return _local_directory(ray.train.get_checkpoint())

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(_tune_safe(metrics), checkpoint=checkpoint)


@contextmanager
def _local_directory(checkpoint) -> Iterator[Path | None]:
    """A Ray checkpoint as a local folder for the duration of the block (None when there is none)."""
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as directory:
        yield Path(directory)


def _tune_safe(metrics: dict[str, Any]) -> dict[str, Any]:
    # Only scalars and strings travel in results; NaN stays NaN (Tune and MLflow both accept it).
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
