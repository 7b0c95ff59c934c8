"""Sessions inside Ray: a Tune trial actor and a Ray Train worker, each on the device Ray gave it."""
from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import ray
import ray.train
import ray.train.torch
import torch
from ray import tune
from torch import nn
from torch.utils.data import DataLoader

from leukotune.tuner.train.sessions import LocalSession

# For the tests only, which declare a GPU on Ray's fake nodes to check placement and packing on a machine without
# one: set in the environment of those nodes, a trial given such a GPU trains on the CPU. Not a setting: a user's
# trial given a GPU it cannot use must fail (see `assigned_device`).
DECLARED_GPUS_FOR_TESTS_ENV = "LEUKOTUNE_TESTS_DECLARED_GPUS_WITHOUT_CUDA"


class GpuUnusableError(RuntimeError):
    """Ray gave this process GPUs that CUDA cannot use: the trial must not train on the CPU in silence."""


def assigned_device() -> torch.device:
    """The device Ray gave this trial or worker: its GPU when it was given one, else the CPU.

    A process given GPU ids must be able to use them: otherwise (a driver older than this torch build needs, a
    container without the GPU) it raises GpuUnusableError naming the node, the driver and torch's CUDA version.
    A process given none trains on the CPU even when a GPU is visible: that GPU belongs to other trials.
    """
    gpu_ids = ray.get_gpu_ids()
    if not gpu_ids:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get(DECLARED_GPUS_FOR_TESTS_ENV) == "1":
        return torch.device("cpu")
    raise GpuUnusableError(describe_unusable_gpu(ray.util.get_node_ip_address(), gpu_ids))


def describe_unusable_gpu(node: str, gpu_ids: list) -> str:
    """One line: where, which GPUs, which NVIDIA driver, which torch and CUDA build, and what CUDA said."""
    return (f"GPU unusable on node {node}: Ray gave this trial GPU {','.join(map(str, gpu_ids))} but torch "
            f"{torch.__version__} (built for CUDA {torch.version.cuda or 'none: a CPU-only build'}) cannot use it; "
            f"NVIDIA driver {nvidia_driver_version()}; {cuda_init_error()}")


def nvidia_driver_version() -> str:
    """The node's NVIDIA kernel driver version, or why there is none to read."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        return next((part for part in text.split() if part[:1].isdigit() and "." in part), text.split("\n")[0])
    except OSError:
        pass
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "not found (no /proc/driver/nvidia/version, no nvidia-smi)"


def cuda_init_error() -> str:
    try:
        torch.cuda.init()
    except Exception as exc:  # noqa: BLE001 - its text is the diagnosis
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"CUDA says: {first[:240]}"
    return "CUDA initialised, but reports no device"


class TuneSession(LocalSession):
    """Inside a Tune function trainable: the loop owns the trial actor's CPUs/GPU directly."""

    def __init__(self):
        super().__init__(device=assigned_device())

    def restore_dir(self):
        return local_directory(tune.get_checkpoint())

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        # Which node trained it (Tune's own `node_ip` cannot tell apart nodes that share an address).
        placed = {**metrics, "node_id": ray.get_runtime_context().get_node_id()}
        tune.report(tune_safe(placed), checkpoint=checkpoint)


class TrainSession:
    """A Ray Train worker: DDP through prepare_model / prepare_data_loader, reports through ray.train."""

    def __init__(self):
        context = ray.train.get_context()
        self.world_rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        # Fails here, before any training, when the worker's GPU cannot be used.
        self._device = assigned_device()

    def device(self) -> torch.device:
        return ray.train.torch.get_device() if self._device.type == "cuda" else self._device

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(model)

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        return ray.train.torch.prepare_data_loader(loader, move_to_device=False)

    def restore_dir(self):
        return local_directory(ray.train.get_checkpoint())

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        placed = {**metrics, "node_id": ray.get_runtime_context().get_node_id()}
        ray.train.report(tune_safe(placed), checkpoint=checkpoint)


@contextmanager
def local_directory(checkpoint) -> Iterator[Path | None]:
    """A Ray checkpoint as a local folder for the duration of the block (None when there is none)."""
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as directory:
        yield Path(directory)


def tune_safe(metrics: dict[str, Any]) -> dict[str, Any]:
    # Only scalars and strings travel in results; NaN stays NaN (Tune and MLflow both accept it).
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
