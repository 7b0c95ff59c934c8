"""A trial's resources and the study's concurrency from what the cluster can start, GPU packing, and the refusal of
a packing that the largest sampled trial would overflow."""
from __future__ import annotations

import pytest

from leukotune.tuner.cluster.capacity import UNLIMITED, ClusterShape, NodeType
from leukotune.tuner.cluster.trial_resources import (
    TrialDoesNotFitError,
    concurrency_for,
    decide_trial_resources,
    trials_per_gpu,
)
from leukotune.tuner.config import ConfigError, load_study
from leukotune.tuner.train.memory import estimate_trial_memory
from leukotune.tuner.tune.packing import check_packing, largest_trials, worst_case

from conftest import REPO_ROOT, SMOKE

GIB = 2**30
PAPER = REPO_ROOT / "studies" / "paper.yaml"


def study(*overrides: str):
    return load_study(SMOKE, ["tune.num_samples=100", "tune.max_concurrent=0", *overrides])


def one_node(cpus: float, gpus: float) -> ClusterShape:
    return ClusterShape((NodeType("node", cpus, gpus, 1, is_head=True),), "test", autoscaling=False)


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
    resources = decide_trial_resources(packed, one_node(cpus, gpus))
    assert concurrency_for(packed, resources, one_node(cpus, gpus)) == expected
    assert resources.tune_request() == {"CPU": 1, "GPU": share}
    cpu_only = decide_trial_resources(packed, one_node(cpus, 0))
    assert cpu_only.tune_request() == {"CPU": 1} and not cpu_only.uses_gpu


def test_ddp_workers_cannot_share_a_gpu_and_no_gpu_is_refused():
    with pytest.raises(ConfigError, match="gpus_per_trial=0.5 with resources.workers=2"):
        decide_trial_resources(study("resources.workers=2", "resources.gpus_per_trial=0.5"), one_node(8, 4))
    with pytest.raises(TrialDoesNotFitError, match="use_gpu=true but no node type of this cluster has a GPU: node"):
        decide_trial_resources(study("resources.use_gpu=true"), one_node(8, 0))


def test_memory_estimate_grows_with_batch_and_image_size():
    small = estimate_trial_memory(study("train.batch_size=16").train)
    bigger_batch = estimate_trial_memory(study("train.batch_size=256").train)
    bigger_images = estimate_trial_memory(study("train.batch_size=16", "train.image_size=128").train)
    assert small.activations * 16 == bigger_batch.activations
    assert bigger_images.activations > 3 * small.activations
    assert estimate_trial_memory(study().train, split_images=1000).data == 1000 * 3 * 64 * 64


def test_the_check_judges_the_largest_trial_the_space_can_sample():
    paper = load_study(PAPER)
    worst, estimate = worst_case(paper, paper.tune.space, split_images=8_500)
    # The study file's own trial (256 px, batch 32) is not the worst: the space samples batch 64.
    assert (worst.image_size, worst.batch_size, worst.color) == (256, 64, "rgb")
    base = estimate_trial_memory(paper.train, 8_500)
    assert estimate.total > base.total
    # train.pipeline=auto may put the split on the GPU: its images are counted, as under `device`.
    assert paper.train.pipeline == "auto" and estimate.data == 8_500 * 3 * 256 * 256
    loader = load_study(PAPER, ["train.pipeline=loader"])
    assert worst_case(loader, loader.tune.space, split_images=8_500)[1].data == 0
    # Every model the space offers is among the candidates, each at its largest sampled size.
    assert {t.model for t in largest_trials(paper, paper.tune.space)} == {"cnn", "resnet50", "mobilenet_v2"}


def test_packing_that_fits_is_summarised_and_one_that_cannot_is_refused():
    paper = load_study(PAPER)
    gpu_worker = one_node(4, 1)
    resources = decide_trial_resources(paper, gpu_worker)
    summary = check_packing(paper, paper.tune.space, resources, 24 * GIB, split_images=8_500)
    assert "4 trial(s) per GPU" in summary and "cnn at batch 64, 256 px" in summary
    crowded = load_study(PAPER, ["resources.gpus_per_trial=0.1"])
    with pytest.raises(ConfigError) as refused:
        check_packing(crowded, crowded.tune.space, decide_trial_resources(crowded, gpu_worker), 24 * GIB,
                      split_images=8_500)
    message = str(refused.value)
    assert message.startswith("resources.gpus_per_trial=0.1: the largest trial the search can sample (cnn at "
                              "batch 64, 256 px)") and "2.4 GiB share of a 24 GiB GPU" in message
    assert "\n" not in message


def test_capacity_counts_each_type_at_its_maximum_within_the_cluster_bound():
    shape = ClusterShape((NodeType("head", 0, 0, 1, is_head=True), NodeType("small", 2, 0, 10),
                          NodeType("big", 8, 0, 2)), "test", autoscaling=True, max_workers=3)
    # The fullest type first: two 8-CPU nodes (16 one-CPU trials), then one 2-CPU node under max_workers=3.
    assert shape.capacity({"CPU": 1.0}) == 18
    unbounded = ClusterShape((NodeType("w", 4, 0, UNLIMITED),), "test", autoscaling=True)
    assert unbounded.capacity({"CPU": 1.0}) == UNLIMITED
    assert concurrency_for(study("tune.num_samples=7"), decide_trial_resources(study(), unbounded), unbounded) == 7
