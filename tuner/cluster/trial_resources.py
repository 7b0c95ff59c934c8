"""A trial's resources, decided once: from the study's `resources` section and what the cluster can start.

One frozen `TrialResources` is decided here, before the first trial, and every consumer takes it as it is: Tune's
request for each trial, Ray Train's ScalingConfig, the test side's scoring task, `leukotune train`, the study's
concurrency and its wait for workers. Nothing downstream looks at `resources.use_gpu` or the cluster again.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from leukotune.tuner.cluster.capacity import UNLIMITED, ClusterShape
from leukotune.tuner.config import ConfigError, StudyConfig

# ray_train trials: the Tune trial actor only waits on its TorchTrainer (whose controller takes 0 CPUs); Tune
# refuses a zero request, so it holds this sliver, and capacity counts it so workers always find their CPUs.
TRIAL_DRIVER_CPU = 0.01


class TrialDoesNotFitError(RuntimeError):
    """No node type of the cluster can hold one trial (too many CPUs, or a GPU where none has one)."""


@dataclass(frozen=True)
class TrialResources:
    """What one trial holds: `workers` copies of (`cpus_per_worker` CPUs, `gpus_per_worker` GPUs)."""

    runtime: str  # inline: the loop in the Tune trial actor; ray_train: a TorchTrainer per trial (DDP)
    workers: int
    cpus_per_worker: int
    gpus_per_worker: float  # 0: CPU only; below 1 packs several trials on one GPU
    # A Tune trial's own actor beside its TorchTrainer's workers; `leukotune train` has none.
    actor_cpu: float = TRIAL_DRIVER_CPU

    @property
    def uses_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    def worker_bundle(self) -> dict[str, float]:
        """One worker's share of a node (the loop's, for an inline trial)."""
        return {"CPU": float(self.cpus_per_worker), **({"GPU": self.gpus_per_worker} if self.uses_gpu else {})}

    def tune_request(self) -> dict[str, float]:
        """What Tune reserves for the trial's own actor. ray_train: the workers hold the rest."""
        return {"CPU": self.actor_cpu} if self.runtime == "ray_train" else self.worker_bundle()

    def capacity_bundle(self) -> dict[str, float]:
        """A worker's bundle with its part of the trial actor's sliver, so capacity never counts a node full of
        workers that leaves the actor itself no room."""
        bundle = self.worker_bundle()
        if self.runtime == "ray_train":
            bundle["CPU"] += self.actor_cpu / self.workers
        return bundle

    def describe(self) -> str:
        gpu = f", {self.gpus_per_worker:g} GPU" if self.uses_gpu else ""
        workers = f"{self.workers} workers x " if self.workers > 1 else ""
        return f"{workers}{self.cpus_per_worker} CPU{gpu} ({self.runtime})"

    def slot_name(self) -> str:
        return "GPU slots" if self.uses_gpu else "trial slots"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrialResources":
        return cls(**values)


def runtime_of(study: StudyConfig) -> str:
    runtime = study.resources.trial_runtime
    if runtime == "auto":
        return "ray_train" if study.resources.workers > 1 else "inline"
    return runtime


def wants_gpu(use_gpu: str, gpus_available: bool) -> bool:
    """`resources.use_gpu` (auto | true | false, checked by the schema) given whether GPUs are there."""
    return use_gpu == "true" or (use_gpu == "auto" and gpus_available)


def trials_per_gpu(gpus_per_trial: float) -> int:
    # 1e-9: 1 / 0.1 is 9.999999999999998 in floating point, and ten trials do fit.
    return max(1, math.floor(1.0 / gpus_per_trial + 1e-9))


def decide_trial_resources(study: StudyConfig, shape: ClusterShape, in_tune: bool = True) -> TrialResources:
    """The trial's resources on this cluster; TrialDoesNotFitError, naming the node types, when none could hold it.

    `in_tune=False`: one training run of `leukotune train`, a TorchTrainer with no Tune trial actor around it."""
    settings = study.resources
    gpu = wants_gpu(settings.use_gpu, shape.has_gpus)
    if gpu and not shape.has_gpus:
        raise TrialDoesNotFitError(f"resources.use_gpu=true but no node type of this cluster has a GPU: "
                                   f"{shape.describe()}")
    if gpu and settings.workers > 1 and settings.gpus_per_trial < 1:
        # NCCL refuses two ranks of one process group on the same GPU ("Duplicate GPU detected").
        raise ConfigError(f"resources.gpus_per_trial={settings.gpus_per_trial:g} with resources.workers="
                          f"{settings.workers}: DDP workers each need a whole GPU; use gpus_per_trial=1, or "
                          f"workers=1 to pack trials")
    resources = TrialResources(runtime_of(study) if in_tune else "ray_train", settings.workers,
                               settings.cpus_per_worker, settings.gpus_per_trial if gpu else 0.0,
                               actor_cpu=TRIAL_DRIVER_CPU if in_tune else 0.0)
    if shape.capacity(resources.capacity_bundle()) < resources.workers:
        need = f"{settings.cpus_per_worker} CPUs" + (f" and {resources.gpus_per_worker:g} GPU" if gpu else "")
        per = f" per worker, {settings.workers} workers" if settings.workers > 1 else ""
        raise TrialDoesNotFitError(f"resources: one trial needs {need}{per}, and no node type of this cluster can "
                                   f"hold it ({shape.describe()}; from {shape.source}); lower "
                                   f"resources.cpus_per_worker or resources.workers, or add a larger node type")
    return resources


def concurrency_for(study: StudyConfig, resources: TrialResources, shape: ClusterShape) -> int:
    """Trials at a time: what the cluster holds at its largest (not what is up now), within tune.max_concurrent
    and the number of trials."""
    slots = shape.capacity(resources.capacity_bundle())
    fits = UNLIMITED if slots == UNLIMITED else int(slots // resources.workers)
    wanted = study.tune.max_concurrent or fits
    return max(1, int(min(wanted, fits, study.tune.num_samples)))
