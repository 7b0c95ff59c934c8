"""The shipped cluster definitions, read as a study reads them: a cluster that starts with no workers still runs
the paper's study, sized from its node types; trials no node type can hold, and study folders the other machines
would not see, are refused before the first trial."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from leukotune.tuner.cluster.capacity import shape_from_autoscaling_config, shape_from_kuberay_cr
from leukotune.tuner.cluster.storage import filesystem_type, is_network_filesystem
from leukotune.tuner.cluster.trial_resources import TrialDoesNotFitError, concurrency_for, decide_trial_resources
from leukotune.tuner.config import load_study
from leukotune.tuner.tune.events import unfit_reason

from conftest import REPO_ROOT

PAPER = REPO_ROOT / "studies" / "paper.yaml"


def cluster_yaml_shape():
    return shape_from_autoscaling_config(yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text()), "cluster.yaml")


def kuberay_shape():
    documents = yaml.safe_load_all((REPO_ROOT / "deploy" / "kuberay-rayjob.yaml").read_text())
    job = next(d for d in documents if d and d.get("kind") == "RayJob")
    ray_cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster",
                   "metadata": {"name": "leukotune-study", "namespace": "leukotune"},
                   "spec": job["spec"]["rayClusterSpec"]}
    return shape_from_kuberay_cr(ray_cluster, "the RayJob's cluster")


@pytest.mark.parametrize("read", [cluster_yaml_shape, kuberay_shape], ids=["cluster.yaml", "kuberay"])
def test_the_paper_study_fills_four_gpu_workers_from_zero(read):
    shape = read()
    workers = [t for t in shape.node_types if not t.is_head]
    assert [(t.cpus, t.gpus, t.max_count) for t in workers] == [(4, 1, 4)]
    head = next(t for t in shape.node_types if t.is_head)
    assert head.cpus == 0 and shape.has_gpus and shape.can_add_nodes and not shape.same_host
    paper = load_study(PAPER)
    resources = decide_trial_resources(paper, shape)
    # Four quarter-GPU trials per 4-vCPU GPU node, four such nodes: 16 at a time, none of them up yet.
    assert resources.worker_bundle() == {"CPU": 1.0, "GPU": 0.25}
    assert concurrency_for(paper, resources, shape) == 16


@pytest.mark.parametrize("read", [cluster_yaml_shape, kuberay_shape], ids=["cluster.yaml", "kuberay"])
def test_a_trial_no_node_type_can_hold_is_refused_naming_the_types(read):
    with pytest.raises(TrialDoesNotFitError) as refused:
        decide_trial_resources(load_study(PAPER, ["resources.cpus_per_worker=8"]), read())
    message = str(refused.value)
    assert message.startswith("resources: one trial needs 8 CPUs and 0.25 GPU, and no node type of this cluster "
                              "can hold it") and "(4 CPU, 1 GPU, up to 4)" in message and "\n" not in message


def test_ray_train_trials_need_room_for_their_actor_too():
    shape = cluster_yaml_shape()
    ddp = load_study(PAPER, ["resources.workers=2", "resources.gpus_per_trial=1", "resources.cpus_per_worker=3"])
    resources = decide_trial_resources(ddp, shape)
    assert resources.runtime == "ray_train" and resources.tune_request() == {"CPU": 0.01}
    assert concurrency_for(ddp, resources, shape) == 2  # 4 GPUs, 2 per trial
    full = load_study(PAPER, ["resources.workers=2", "resources.gpus_per_trial=1", "resources.cpus_per_worker=4"])
    with pytest.raises(TrialDoesNotFitError, match="no node type of this cluster can hold it"):
        decide_trial_resources(full, shape)  # 4 CPUs per worker leave no room for the trial's own actor


def test_fake_multinode_nodes_share_this_machine():
    config = {"provider": {"type": "external",
                           "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"},
              "max_workers": 2, "head_node_type": "head",
              "available_node_types": {"head": {"resources": {"CPU": 0}, "max_workers": 0},
                                       "cpu_worker": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 2}}}
    shape = shape_from_autoscaling_config(config, "test")
    assert shape.same_host and shape.can_add_nodes and not shape.has_gpus


@pytest.mark.parametrize("kind,shared", [("nfs4", True), ("nfs", True), ("fuse.sshfs", True), ("lustre", True),
                                         ("ext4", False), ("xfs", False), ("overlay", False), ("tmpfs", False)])
def test_network_file_systems_are_told_from_local_ones(kind, shared):
    assert is_network_filesystem(kind) is shared


def test_filesystem_type_of_a_path_is_its_mount_points(tmp_path: Path):
    root = filesystem_type(Path("/"))
    assert root != "unknown" and filesystem_type(Path("/proc/self")) == "proc"
    assert filesystem_type(tmp_path / "not-yet" / "there") == filesystem_type(tmp_path)


def test_a_node_unfit_error_is_found_in_tunes_error_text():
    text = ("Failure # 1 (occurred at 2026-12-05)\nray.exceptions.RayTaskError(GpuUnusableError): ray::x()\n"
            "  File \"...\", line 9\nleukotune.tuner.train.ray_sessions.GpuUnusableError: GPU unusable on node "
            "10.0.0.7: Ray gave this trial GPU 0 but torch 2.14.1 (built for CUDA 13.0) cannot use it\n")
    assert unfit_reason(text) == ("GPU unusable on node 10.0.0.7: Ray gave this trial GPU 0 but torch 2.14.1 "
                                  "(built for CUDA 13.0) cannot use it")
    assert unfit_reason("ValueError: something else\n") is None
