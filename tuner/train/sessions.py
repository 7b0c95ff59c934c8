"""Sessions: how the training loop talks to where it runs. This module: a plain process (tests, benchmarks, the
GPU check), with no Ray; `ray_sessions.py`: a Tune trial and a Ray Train worker."""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader


def pick_device(use_gpu: str) -> torch.device:
    """A plain process's device for `resources.use_gpu` (auto | true | false)."""
    if use_gpu == "true" and not torch.cuda.is_available():
        raise RuntimeError("resources.use_gpu=true but no CUDA device is visible to this worker")
    return torch.device("cuda" if use_gpu != "false" and torch.cuda.is_available() else "cpu")


class LocalSession:
    """Plain process: keeps reports in memory; resumes from a given checkpoint folder. Used by tests and benches."""

    world_rank, world_size = 0, 1

    def __init__(self, use_gpu: str = "auto", resume_from: Path | None = None, keep_dir: Path | None = None,
                 device: torch.device | None = None):
        self._device = device if device is not None else pick_device(use_gpu)
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
