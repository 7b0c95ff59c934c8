"""resources.gpus_per_trial: trials packed per GPU, what Ray is asked for, and the refusal of a packing that cannot fit."""
from __future__ import annotations

import pytest

from leukotune.tuner.config import ConfigError, load_study
from leukotune.tuner.train.memory import estimate_trial_memory
from leukotune.tuner.tune.packing import check_packing, trials_per_gpu
from leukotune.tuner.tune.study import concurrency_for
from leukotune.tuner.tune.trainable import trial_resources

from conftest import SMOKE

GIB = 2**30


def study(*overrides: str):
    return load_study(SMOKE, ["tune.num_samples=100", "tune.max_concurrent=0", *overrides])


@pytest.mark.parametrize("share,expected", [(1.0, 1), (0.5, 2), (0.25, 4), (0.3, 3), (0.1, 10), (0.125, 8)])
def test_trials_per_gpu(share, expected):
    assert trials_per_gpu(share) == expected


@pytest.mark.parametrize("gpus,cpus,share,expected", [
    (8, 64, 1.0, 8),
    (8, 64, 0.25, 32),  # the 8-GPU node that ran 8 trials runs 32
    (8, 16, 0.25, 16),  # CPUs bind first
    (1, 64, 0.3, 3),
    (3.0, 64, 0.5, 6),
])
def test_concurrency_counts_packed_trials(gpus, cpus, share, expected):
    packed = study(f"resources.gpus_per_trial={share}")
    assert concurrency_for(packed, {"CPU": cpus, "GPU": gpus}, gpu=True) == expected
    assert trial_resources(packed, gpu=True) == {"CPU": 1, "GPU": share}
    assert trial_resources(packed, gpu=False) == {"CPU": 1}


def test_ddp_workers_cannot_share_a_gpu_and_no_gpu_is_refused():
    with pytest.raises(ConfigError, match="gpus_per_trial=0.5 with resources.workers=2"):
        concurrency_for(study("resources.workers=2", "resources.gpus_per_trial=0.5"), {"CPU": 8, "GPU": 4}, True)
    with pytest.raises(ConfigError, match="one trial needs 1 CPUs and 0.25 GPUs"):
        concurrency_for(study("resources.gpus_per_trial=0.25"), {"CPU": 8, "GPU": 0}, True)


def test_memory_estimate_grows_with_batch_and_image_size():
    small = estimate_trial_memory(study("train.batch_size=16").train)
    bigger_batch = estimate_trial_memory(study("train.batch_size=256").train)
    bigger_images = estimate_trial_memory(study("train.batch_size=16", "train.image_size=128").train)
    assert small.activations * 16 == bigger_batch.activations
    assert bigger_images.activations > 3 * small.activations
    assert estimate_trial_memory(study().train, split_images=1000).data == 1000 * 3 * 64 * 64


def test_packing_that_fits_is_summarised_and_one_that_cannot_is_refused():
    fits = study("resources.gpus_per_trial=0.25", "train.batch_size=64", "train.image_size=128")
    assert "4 trial(s) per GPU" in check_packing(fits, 139 * GIB, split_images=34_116)
    too_big = study("resources.gpus_per_trial=0.05", "train.model=resnet50", "train.image_size=224",
                    "train.batch_size=4096", "train.unfreeze=16", "train.weights=null")
    with pytest.raises(ConfigError) as refused:
        check_packing(too_big, 24 * GIB, split_images=0)
    message = str(refused.value)
    assert message.startswith("resources.gpus_per_trial=0.05:") and "1.2 GiB share of a 24 GiB GPU" in message
    assert "\n" not in message
