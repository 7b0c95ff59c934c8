"""What a real multi-node cluster refuses before the first trial, each in one line with exit code 2 and nothing
left half-written in MLflow: a trial no node type can hold, workers that never arrive, and a study folder that
another node does not see. The clusters are Ray's own stand-ins on this machine (tests/fake_cluster.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from leukotune.tuner.cluster.capacity import AUTOSCALING_CONFIG_ENV
from leukotune.tuner.cluster.storage import SHARED_STORAGE_ENV

from conftest import SMOKE, TINY, local_uri, run_leukotune, sets, study_runs
from fake_cluster import (
    NEVER_LAUNCHES,
    can_unshare_mounts,
    start_autoscaling_cluster,
    start_cluster_with_a_private_disk,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # clusters of several nodes: `make e2e`

STUDY = [*TINY, "tune.num_samples=2", "train.epochs=1", "tracking.experiment=refused"]


def user_env(cluster, workdir: Path, **extra: str) -> dict[str, str]:
    env = dict(cluster.env)  # RAY_AUTH_MODE=token and the token file: a client joining by address needs both
    env.update(LEUKOTUNE_CACHE_DIR=str(workdir / "cache"), LEUKOTUNE_MIN_FREE_GB="0.1", **extra)
    for inherited in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ADDRESS"):
        env.pop(inherited, None)
    return env


def assert_refused_before_anything(result, workdir: Path, *phrases: str) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    _, parents, trials = study_runs(local_uri(workdir), "refused")
    assert parents == [] and trials == []  # no MLflow run was opened
    return errors[0]


@pytest.fixture(scope="module")
def stalled_cluster(tmp_path_factory):
    """A head with no CPUs whose node types promise CPU workers that never come (its provider never delivers a
    node, as a cloud out of quota). Its node types are read from the config file named for the driver."""
    folder = tmp_path_factory.mktemp("stalled")
    cluster = start_autoscaling_cluster(folder, {"cpu_worker": {"resources": {"CPU": 1}, "max_workers": 2}},
                                        module=NEVER_LAUNCHES)
    yield cluster
    cluster.stop()


def test_a_trial_no_node_type_can_hold_is_refused_in_one_line(stalled_cluster, tmp_path):
    env = user_env(stalled_cluster, tmp_path, **{AUTOSCALING_CONFIG_ENV: str(stalled_cluster.config_path)})
    result = run_leukotune(["tune", "--config", str(SMOKE), "--address", stalled_cluster.gcs_address,
                            *sets([*STUDY, "resources.cpus_per_worker=2"])], tmp_path, env)
    assert_refused_before_anything(result, tmp_path, "one trial needs 2 CPUs", "no node type of this cluster",
                                   "ray.head.default (0 CPU, 0 GPU, head)", "cpu_worker (1 CPU, 0 GPU, up to 2)")


def test_workers_that_never_arrive_are_waited_for_then_given_up_on(stalled_cluster, tmp_path):
    # The test provider is not one leukotune knows to run on this machine: say the study folder is shared.
    env = user_env(stalled_cluster, tmp_path, **{AUTOSCALING_CONFIG_ENV: str(stalled_cluster.config_path),
                                                 SHARED_STORAGE_ENV: "1"})
    result = run_leukotune(["tune", "--config", str(SMOKE), "--address", stalled_cluster.gcs_address,
                            *sets([*STUDY, "resources.wait_for_nodes_s=8"])], tmp_path, env)
    assert "waiting for workers: 0 of 2 trial slots up" in result.stdout, result.stdout[-3000:]
    assert_refused_before_anything(result, tmp_path, "no worker arrived within 8 s (resources.wait_for_nodes_s)",
                                   "cpu_worker (1 CPU, 0 GPU, up to 2)")
    assert not list((tmp_path / ".leukotune" / "runs").glob("*/tuner.pkl"))  # Tune never started


def test_a_study_folder_another_node_does_not_see_is_refused(tmp_path):
    reason = can_unshare_mounts()
    if reason:
        pytest.skip(reason)
    private = tmp_path / "node-local"
    private.mkdir()
    cluster = start_cluster_with_a_private_disk(tmp_path, private)
    try:
        env = user_env(cluster, tmp_path)
        result = run_leukotune(["tune", "--config", str(SMOKE), "--address", cluster.gcs_address,
                                *sets([*STUDY, f"storage_path={private / 'runs'}"])], tmp_path, env)
    finally:
        cluster.stop()
    line = assert_refused_before_anything(result, tmp_path, f"storage_path {private / 'runs'}", "is not shared",
                                          "set storage_path to a folder every node mounts")
    assert "does not see it" in line


def test_a_cloud_storage_uri_is_refused_before_ray_starts(tmp_path):
    env = {**os.environ, "LEUKOTUNE_CACHE_DIR": str(tmp_path / "cache"), "RAY_ADDRESS": "127.0.0.1:1"}
    result = run_leukotune(["tune", "--config", str(SMOKE), *sets([*STUDY, "storage_path=s3://bucket/runs"])],
                           tmp_path, env)
    assert_refused_before_anything(result, tmp_path, "storage_path s3://bucket/runs is a cloud URI")
    assert not (tmp_path / "s3:").exists()  # no local folder named after the bucket
