"""Trials packed on GPUs (`resources.gpus_per_trial`): how many fit, and a refusal before Tune when one cannot.

Ray only counts GPU fractions; it never checks memory. Four trials at 0.25 that each need a third of the GPU would
all start and then fail with out-of-memory errors, one retry after another. So the study checks first.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import ray
import torch

from leukotune.tuner.config import ConfigError, StudyConfig
from leukotune.tuner.train.memory import estimate_trial_memory

# A GPU-node probe that has not answered by then (no GPU node up yet: the autoscaler is still starting one) is
# given up on, and the study starts unchecked rather than waiting on the cloud.
PROBE_TIMEOUT_S = 60.0


def trials_per_gpu(gpus_per_trial: float) -> int:
    # 1e-9: 1 / 0.1 is 9.999999999999998 in floating point, and ten trials do fit.
    return max(1, math.floor(1.0 / gpus_per_trial + 1e-9))


def gpu_trial_slots(cluster_gpus: float, study: StudyConfig) -> int:
    """Concurrent trials the cluster's GPUs hold: whole GPUs times trials per GPU, over workers per trial."""
    resources = study.resources
    if resources.workers > 1 and resources.gpus_per_trial < 1:
        # NCCL refuses two ranks of one process group on the same GPU ("Duplicate GPU detected").
        raise ConfigError(f"resources.gpus_per_trial={resources.gpus_per_trial:g} with resources.workers="
                          f"{resources.workers}: DDP workers each need a whole GPU; use gpus_per_trial=1, or "
                          f"workers=1 to pack trials")
    return int(cluster_gpus + 1e-9) * trials_per_gpu(resources.gpus_per_trial) // resources.workers


def check_packing(study: StudyConfig, gpu_memory_bytes: int, split_images: int) -> str:
    """Refuse (ConfigError) a gpus_per_trial share smaller than a trial's estimated peak; else a one-line summary."""
    resident = split_images if study.train.pipeline == "device" else 0
    estimate = estimate_trial_memory(study.train, resident)
    share = study.resources.gpus_per_trial * gpu_memory_bytes
    gib = 2**30
    if estimate.total > share:
        raise ConfigError(
            f"resources.gpus_per_trial={study.resources.gpus_per_trial:g}: one trial of {study.train.model} at "
            f"batch {study.train.batch_size}, {study.train.image_size} px needs about {estimate.describe()}, "
            f"more than its {share / gib:.1f} GiB share of a {gpu_memory_bytes / gib:.0f} GiB GPU; raise "
            f"gpus_per_trial or lower train.batch_size")
    return (f"GPU packing: {trials_per_gpu(study.resources.gpus_per_trial)} trial(s) per GPU, each about "
            f"{estimate.total / gib:.1f} GiB of a {share / gib:.1f} GiB share")


@ray.remote(num_cpus=0, num_gpus=0.01)
def _gpu_memory_on_a_worker() -> int:
    return int(torch.cuda.get_device_properties(0).total_memory)


def probe_gpu_memory(log: Callable[[str], None] = print) -> int | None:
    """Total memory of one GPU: this process's, else a GPU node's (a tiny Ray task); None if none answers."""
    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory)
    task = _gpu_memory_on_a_worker.remote()
    try:
        return int(ray.get(task, timeout=PROBE_TIMEOUT_S))
    except ray.exceptions.GetTimeoutError:
        ray.cancel(task, force=True)
        log(f"WARNING: no GPU node answered within {PROBE_TIMEOUT_S:.0f} s; GPU packing not checked")
        return None
