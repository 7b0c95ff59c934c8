"""CUDA MPS on GPU nodes, started before Ray so packed trials share the GPU at once: cluster.yaml's worker start
commands run as `ray up` runs them (tests/test_cluster_commands.py's fake node), and the KubeRay GPU worker's
command as KubeRay composes it with its own `ray start`. Where MPS cannot start, Ray still starts."""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import with_head_node_ip

from conftest import REPO_ROOT
from test_cluster_commands import CLUSTER, LOGGING_SHIM, as_ray_runs_it, exit_code, node, run_on_node  # noqa: F401
from test_cluster_commands import pytestmark as _needs_unshare

pytestmark = _needs_unshare
MPS = "nvidia-cuda-mps-control"


def worker_commands() -> list[str]:
    return with_head_node_ip(CLUSTER["worker_start_ray_commands"], head_ip="10.0.0.1")


def run_worker_start(node: Path) -> tuple[list[str], str]:
    """Every worker start command in order, wrapped as Ray runs them; the stand-ins' calls and the output."""
    env = {"RAY_OVERRIDE_RESOURCES": CLUSTER["available_node_types"]["gpu_worker"]["resources"]}
    calls, output = [], ""
    for cmd in worker_commands():
        done, logged, _alive = run_on_node(node, as_ray_runs_it(cmd, in_docker=True, home=node / "home", env=env))
        assert exit_code(done) == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
        calls += logged
        output += done.stdout
    return calls, output


@pytest.mark.parametrize("has_mps", [True, False])
def test_gpu_workers_start_mps_before_ray_and_join_without_it(node, has_mps):
    if has_mps:
        (node / "shims" / MPS).write_text(LOGGING_SHIM)
        (node / "shims" / MPS).chmod(0o755)
    calls, output = run_worker_start(node)
    ray_start = next(i for i, c in enumerate(calls) if c.startswith("ray start"))
    if has_mps:
        assert calls.index(f"{MPS} -d") < ray_start, calls
    else:
        assert "CUDA MPS did not start" in output and not any(c.startswith(MPS) for c in calls)
    assert "--address=10.0.0.1:6379" in calls[ray_start]


def kuberay_worker_line(ray_start: str) -> str:
    """The container's bash line as KubeRay builds it without the overwrite annotation: the user's command and
    args joined, then `&& ulimit -n 65536; <generated ray start>`."""
    docs = [d for d in yaml.safe_load_all((REPO_ROOT / "deploy" / "kuberay-rayjob.yaml").read_text()) if d]
    job = next(d for d in docs if d["kind"] == "RayJob")
    container = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    user = " ".join([*container.get("command", []), *container.get("args", [])])
    return f"{user} && ulimit -n 65536; {ray_start}"


@pytest.mark.parametrize("has_mps", [True, False])
def test_the_kuberay_gpu_worker_starts_mps_then_ray(tmp_path, has_mps):
    shims, log = tmp_path / "shims", tmp_path / "calls.log"
    shims.mkdir()
    for name in ("ray", *([MPS] if has_mps else [])):
        (shims / name).write_text(LOGGING_SHIM)
        (shims / name).chmod(0o755)
    line = kuberay_worker_line("ray start --address=head:6379 --block")
    done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": f"{shims}:/usr/bin:/bin", "SHIM_LOG": str(log)})
    calls = log.read_text().splitlines()
    assert done.returncode == 0, (shlex.quote(line), done.stderr)
    assert calls[-1] == "ray start --address=head:6379 --block"
    assert calls[:-1] == ([f"{MPS} -d"] if has_mps else []) and ("did not start" in done.stdout) != has_mps
