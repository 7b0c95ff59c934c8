"""Trials packed on GPUs (`resources.gpus_per_trial`): a refusal before Tune when the largest trial the search can
sample would not fit its share.

Ray only counts GPU fractions; it never checks memory. Four trials at 0.25 that each need a third of the GPU would
all start and then fail with out-of-memory errors, one retry after another. So the study checks first, and it
checks the worst case: the search samples image sizes, batch sizes and models, and the trial that overflows is
the largest one, not the study file's defaults.
"""
from __future__ import annotations

import itertools
from dataclasses import replace
from collections.abc import Callable
from typing import Any

import ray
import torch

from leukotune.tuner.cluster.trial_resources import TrialResources, trials_per_gpu
from leukotune.tuner.config import ConfigError, StudyConfig, TrainConfig, replace_train
from leukotune.tuner.tune.space import applies
from leukotune.models import optimizer_state_values
from leukotune.tuner.train.memory import MemoryEstimate, estimate_trial_memory

# A GPU-node probe that has not answered by then is given up on, and the study starts unchecked.
PROBE_TIMEOUT_S = 60.0
# Settings whose largest value makes the largest trial (memory grows with each); other sampled settings (lr,
# dropout, augmentation) do not change a trial's memory. conv_layers is not monotone (deeper: more activations
# early, fewer weights late), so both of its bounds are tried.
LARGEST_WINS = ("image_size", "batch_size", "kernel_size", "base_filters", "dense", "unfreeze")
BOTH_BOUNDS = ("conv_layers",)


def _candidates(name: str, spec: dict[str, Any]) -> list[Any]:
    kind = next(k for k in spec if k != "when")
    values = spec[kind]
    if name == "model":
        return list(values)
    if name == "color":
        return ["rgb"] if "rgb" in values else list(values)  # three channels weigh more than one
    if name == "optimizer":
        return [max(values, key=optimizer_state_values)]
    if name in BOTH_BOUNDS:
        return sorted({min(values), max(values)})
    if name in LARGEST_WINS:
        return [max(values)]
    return []


def largest_trials(study: StudyConfig, space: dict[str, Any]) -> list[TrainConfig]:
    """The train configs the space can sample that could need the most memory (a handful, not the whole space)."""
    options = {name: _candidates(name, spec) for name, spec in space.items()}
    options = {name: values for name, values in options.items() if values}
    names = list(options)
    found: dict[str, TrainConfig] = {}
    for combination in itertools.product(*(options[n] for n in names)):
        params: dict[str, Any] = study.train.to_dict()
        for name, value in zip(names, combination):
            if applies(space[name], params):
                params[name] = value
        try:
            train = replace_train(study, params).train
        except ConfigError:
            continue  # a combination the space cannot produce (e.g. too deep for the image)
        found[repr(sorted(train.to_dict().items()))] = train
    return list(found.values()) or [study.train]


def resident_images(study: StudyConfig, split_images: int) -> int:
    # `auto` puts the split on the GPU whenever it fits a quarter of the free memory: count it, as `device` does.
    return split_images if study.train.pipeline in ("auto", "device") else 0


def worst_case(study: StudyConfig, space: dict[str, Any], split_images: int) -> tuple[TrainConfig, MemoryEstimate]:
    """The sampled trial with the largest estimated peak memory, and its estimate."""
    folds = max(1, study.data.cv_folds)
    # Each fold model holds its own device copy of its train and validation cells: all non-test cells each.
    resident = resident_images(study, split_images) * folds
    estimates = [(train, with_fold_models(estimate_trial_memory(train, resident), folds))
                 for train in largest_trials(study, space)]
    return max(estimates, key=lambda pair: pair[1].total)


def with_fold_models(estimate: MemoryEstimate, folds: int) -> MemoryEstimate:
    """A cross-validated trial keeps `folds` models, their gradients and optimiser states on its GPU; they train one
    after another, so one model's activations are alive at a time."""
    return replace(estimate, weights=estimate.weights * folds,
                   gradients_and_optimizer=estimate.gradients_and_optimizer * folds)


def check_packing(study: StudyConfig, space: dict[str, Any], resources: TrialResources, gpu_memory_bytes: int,
                  split_images: int) -> str:
    """Refuse (ConfigError) a GPU share smaller than the largest sampled trial's peak; else a one-line summary."""
    train, estimate = worst_case(study, space, split_images)
    share = resources.gpus_per_worker * gpu_memory_bytes
    gib = 2**30
    trial = f"{train.model} at batch {train.batch_size}, {train.image_size} px" + (
        f", {study.data.cv_folds} fold models" if study.data.cv_folds else "")
    if estimate.total > share:
        raise ConfigError(
            f"resources.gpus_per_trial={resources.gpus_per_worker:g}: the largest trial the search can sample "
            f"({trial}) needs about {estimate.describe()}, more than its {share / gib:.1f} GiB share of a "
            f"{gpu_memory_bytes / gib:.0f} GiB GPU; raise gpus_per_trial, lower the largest batch_size or "
            f"image_size in tune.space, or set train.pipeline=loader")
    return (f"GPU packing: {trials_per_gpu(resources.gpus_per_worker)} trial(s) per GPU; the largest trial the "
            f"search can sample ({trial}) needs about {estimate.total / gib:.1f} GiB of a {share / gib:.1f} GiB "
            f"share")


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
    except ray.exceptions.RayTaskError as exc:
        log(f"WARNING: GPU packing not checked: the GPU node could not read its GPU "
            f"({str(exc).strip().splitlines()[-1][:200]})")
    return None
