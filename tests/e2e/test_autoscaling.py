"""A study on a cluster that starts with no workers, as both shipped cluster definitions do: Ray's own autoscaler
(its fake multi-node provider, which starts real raylets on this machine) grows it for the study and shrinks it
after. Then GPU worker types: packing, and a GPU slot whose GPU cannot be used.

There is no CUDA here. The GPU cases declare `GPU: 1` on the worker type; with the test switch
LEUKOTUNE_TESTS_DECLARED_GPUS_WITHOUT_CUDA=1 in the nodes' environment (never in a user's: it is no setting, only
read by `assigned_device`), a trial given such a GPU trains on the CPU, so placement and packing can be checked;
without it, the trial fails at once, as it must on a real node whose GPU CUDA cannot use.
"""
from __future__ import annotations

import re

import pytest

from leukotune.tuner.train.ray_sessions import DECLARED_GPUS_FOR_TESTS_ENV

from conftest import SMOKE, TINY, local_uri, run_leukotune, sets, study_runs
from fake_cluster import FAKE_HEAD_NODE_ID, start_autoscaling_cluster

pytestmark = pytest.mark.e2e

STUDY = [*TINY, "tune.max_concurrent=0", "tune.scheduler=fifo", "tracking.log_models=0", "tune.test_top_k=1"]


def user_env(cluster, workdir):
    env = dict(cluster.env)
    env.update(LEUKOTUNE_CACHE_DIR=str(workdir / "cache"), LEUKOTUNE_MIN_FREE_GB="0.1")
    for inherited in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ADDRESS"):
        env.pop(inherited, None)
    return env


def workers(nodes: list[dict]) -> list[dict]:
    return [n for n in nodes if n["node_id"] != FAKE_HEAD_NODE_ID]


def trial_nodes(trials) -> list[str]:
    return [t.data.tags.get("leukotune.node_id") for t in trials]


def test_a_study_grows_the_cluster_from_zero_workers_and_leaves_it_idle(tmp_path):
    cluster = start_autoscaling_cluster(tmp_path, {"cpu_worker": {"resources": {"CPU": 1}, "max_workers": 2}})
    try:
        assert workers(cluster.alive_nodes()) == []  # nothing to train on when the study starts
        result = run_leukotune(["tune", "--config", str(SMOKE), "--address", cluster.gcs_address,
                                *sets([*STUDY, "tune.num_samples=3", "train.epochs=2",
                                       "tracking.experiment=grown"])], tmp_path, user_env(cluster, tmp_path))
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-4000:]
        assert ("cluster: ray.head.default (0 CPU, 0 GPU, head), cpu_worker (1 CPU, 0 GPU, up to 2), from the "
                f"autoscaling config {cluster.config_path}") in result.stdout
        # Sized from the node types (2 slots), not from the head that was alive (0 CPUs).
        assert "waiting for workers: 0 of 2 trial slots up" in result.stdout
        assert re.search(r"study \S+: 3 trials, 2 at a time", result.stdout), result.stdout[-3000:]

        _, parents, trials = study_runs(local_uri(tmp_path), "grown")
        assert [p.info.status for p in parents] == ["FINISHED"]
        assert sorted(t.info.status for t in trials) == ["FINISHED"] * 3
        nodes = trial_nodes(trials)
        # Every trial ran on a worker the autoscaler started for the study.
        assert all(node and node != FAKE_HEAD_NODE_ID for node in nodes), nodes
        assert {t.data.tags.get("leukotune.device") for t in trials} == {"cpu"}
        # Idle workers are released once the study no longer asks for them.
        cluster.wait_until(lambda alive: not workers(alive), "the idle workers to be released")
    finally:
        cluster.stop()


def test_quarter_gpus_pack_four_trials_on_one_gpu_worker(tmp_path):
    cluster = start_autoscaling_cluster(tmp_path, {"gpu_worker": {"resources": {"CPU": 4, "GPU": 1},
                                                                  "max_workers": 1}},
                                        node_env={DECLARED_GPUS_FOR_TESTS_ENV: "1"})
    try:
        result = run_leukotune(["tune", "--config", str(SMOKE), "--address", cluster.gcs_address,
                                *sets([*STUDY, "tune.num_samples=4", "train.epochs=1", "resources.cpus_per_worker=1",
                                       "resources.gpus_per_trial=0.25", "tracking.experiment=packed"])],
                               tmp_path, user_env(cluster, tmp_path))
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-4000:]
        assert "each trial 1 CPU, 0.25 GPU (inline)" in result.stdout
        assert "waiting for workers: 0 of 4 GPU slots up" in result.stdout
        assert re.search(r"study \S+: 4 trials, 4 at a time", result.stdout), result.stdout[-3000:]
        _, _, trials = study_runs(local_uri(tmp_path), "packed")
        assert sorted(t.info.status for t in trials) == ["FINISHED"] * 4
        nodes = set(trial_nodes(trials))
        assert len(nodes) == 1 and FAKE_HEAD_NODE_ID not in nodes  # four quarter-GPU trials on one GPU node
        assert {t.data.tags.get("leukotune.device") for t in trials} == {"cpu"}  # the test switch, recorded
    finally:
        cluster.stop()


def test_a_gpu_slot_whose_gpu_cannot_be_used_stops_the_study_at_once(tmp_path):
    cluster = start_autoscaling_cluster(tmp_path, {"gpu_worker": {"resources": {"CPU": 2, "GPU": 1},
                                                                  "max_workers": 1}})
    try:
        result = run_leukotune(["tune", "--config", str(SMOKE), "--address", cluster.gcs_address,
                                *sets([*STUDY, "tune.num_samples=3", "train.epochs=1", "resources.cpus_per_worker=1",
                                       "resources.gpus_per_trial=0.5", "tracking.experiment=nocuda"])],
                               tmp_path, user_env(cluster, tmp_path))
    finally:
        cluster.stop()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(errors) == 1, result.stderr[-3000:]
    line = errors[0]
    assert line.startswith("error: study stopped: trial ") and "GPU unusable on node " in line, line
    assert re.search(r"torch 2\.14\.1\S* \(built for CUDA \d", line) and "NVIDIA driver " in line, line
    _, parents, trials = study_runs(local_uri(tmp_path), "nocuda")
    assert [p.info.status for p in parents] != ["RUNNING"] and trials
    assert "RUNNING" not in {t.info.status for t in trials}
    assert not any(t.data.tags.get("leukotune.device") for t in trials)  # not one epoch on the CPU in silence
