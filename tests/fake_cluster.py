"""Ray's own stand-ins for a multi-node cluster, on this one machine: an autoscaling cluster that grows from zero
workers (Ray's fake multi-node provider) and a second node whose view of the disk differs from the head's.

Each cluster has its own token, temp folder and free ports, and `stop()` ends exactly its own processes: Ray's
`AutoscalingCluster` would run `ray stop --force`, which ends every Ray on the machine, and it reads an example
file the Ray wheel does not ship. Here the fake provider is loaded as an `external` provider (whose defaults are
built in), so the autoscaling config is complete as written.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

from e2e.servers import VENV_BIN, Background, free_port, ray_env, start, wait_http, write_token

TESTS = Path(__file__).resolve().parent

# The fake provider names its head node so; its workers get ...00001, ...00002 and so on.
FAKE_HEAD_NODE_ID = "f" * 51 + "00000"
FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
# Sections every autoscaling config carries; the fake provider runs none of these commands.
EMPTY_SECTIONS = {"file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
                  "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
                  "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
                  "worker_start_ray_commands": []}


class NeverLaunchingProvider(FakeMultiNodeProvider):
    """A cloud that accepts every launch and never delivers the node (a quota, a stuck image pull)."""

    def create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        return None


NEVER_LAUNCHES = f"{__name__}.NeverLaunchingProvider"


def autoscaling_config(gcs_port: int, workers: dict[str, dict[str, Any]], idle_timeout_s: float = 6.0,
                       module: str = FAKE_PROVIDER) -> dict[str, Any]:
    """A head with no CPUs (nothing runs there, as in cluster.yaml) and the given worker types, min 0 each."""
    types = {"ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}}
    for name, spec in workers.items():
        types[name] = {"resources": spec["resources"], "node_config": {}, "min_workers": 0,
                       "max_workers": spec["max_workers"]}
    return {"cluster_name": f"fake-{gcs_port}", "max_workers": sum(w["max_workers"] for w in workers.values()),
            "upscaling_speed": 1.0, "idle_timeout_minutes": idle_timeout_s / 60.0,
            "provider": {"type": "external", "module": module, "gcs_address": f"127.0.0.1:{gcs_port}",
                         "launch_multiple": True},
            "auth": {"ssh_user": "ray"}, "available_node_types": types, "head_node_type": "ray.head.default",
            **EMPTY_SECTIONS}


@dataclass
class Cluster:
    """A running test cluster: its addresses, the environment a client needs, and what to stop."""

    gcs_address: str
    dashboard_url: str
    env: dict[str, str]
    folder: Path
    temp_dir: Path
    processes: list[Background] = field(default_factory=list)
    config_path: Path | None = None

    def state(self, kind: str, **query: str) -> list[dict]:
        """Ray's state API (`/api/v0/<kind>`), with the cluster's token."""
        token = Path(self.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
        url = f"{self.dashboard_url}/api/v0/{kind}?{urllib.parse.urlencode({'limit': '1000', **query})}"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.state("nodes") if n.get("state") == "ALIVE"]

    def wait_until(self, condition, what: str, timeout_s: float = 600.0):
        """Poll `condition()` (with the alive nodes) until it is truthy; fail naming `what` and the nodes."""
        deadline = time.monotonic() + timeout_s
        nodes: list[dict] = []
        while time.monotonic() < deadline:
            nodes = self.alive_nodes()
            value = condition(nodes)
            if value:
                return value
            time.sleep(1.0)
        raise TimeoutError(f"{what} not within {timeout_s:.0f} s; alive: {[n['node_id'][-5:] for n in nodes]}\n"
                           + "\n".join(p.tail(1500) for p in self.processes))

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop(grace_s=20.0)
        _kill_processes_mentioning(str(self.temp_dir))
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _kill_processes_mentioning(text: str) -> None:
    """The fake provider starts worker raylets from the autoscaler, outside the head's process group: end every
    process whose command line names this cluster's own temp folder, and only those."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def _head_command(temp_dir: Path, gcs_port: int, dashboard_port: int, num_cpus: int,
                  extra: list[str] = ()) -> list[str]:
    return [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
            f"--port={gcs_port}", f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1",
            f"--num-cpus={num_cpus}", "--include-dashboard=true", f"--ray-client-server-port={free_port()}",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
            *extra]


def start_autoscaling_cluster(folder: Path, workers: dict[str, dict[str, Any]], node_env: dict[str, str] = {},
                              module: str = FAKE_PROVIDER) -> Cluster:
    """A token-authenticated head with no CPUs whose autoscaler starts `workers` (name -> resources, max_workers)
    on this machine when work asks for them. `node_env` reaches every node's processes (the trials' too)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="lkf-", dir="/tmp"))  # short: socket paths must fit 107 chars
    gcs_port, dashboard_port = free_port(), free_port()
    config_path = folder / "autoscaling.yaml"
    config_path.write_text(yaml.safe_dump(autoscaling_config(gcs_port, workers, module=module)))
    env = ray_env(write_token(folder))
    # PYTHONPATH: the autoscaler imports a provider of this module by name (NEVER_LAUNCHES).
    head_env = {**env, **node_env, "PYTHONPATH": os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]),
                "RAY_FAKE_CLUSTER": "1", "RAY_enable_autoscaler_v2": "1",
                "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID, "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID,
                "RAY_NODE_TYPE_NAME": "ray.head.default", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    command = _head_command(temp_dir, gcs_port, dashboard_port, 0, [f"--autoscaling-config={config_path}"])
    head = start("ray-fake-head", command, head_env, folder)
    cluster = Cluster(f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}", env, folder, temp_dir, [head],
                      config_path)
    try:
        wait_http(f"{cluster.dashboard_url}/api/version", ok=(200, 401), process=head)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def start_cluster_with_a_private_disk(folder: Path, private: Path) -> Cluster:
    """A head (1 CPU) and a second node (1 CPU) on this machine whose processes see an empty, private file system
    mounted over `private` (a mount namespace of their own): to the second node, `private` is another disk."""
    temp_dir = Path(tempfile.mkdtemp(prefix="lkp-", dir="/tmp"))
    gcs_port, dashboard_port = free_port(), free_port()
    env = ray_env(write_token(folder))
    head = start("ray-head", _head_command(temp_dir, gcs_port, dashboard_port, 1), env, folder)
    cluster = Cluster(f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}", env, folder, temp_dir, [head])
    try:
        wait_http(f"{cluster.dashboard_url}/api/version", ok=(200, 401), process=head)
        node_temp = temp_dir / "node2"
        node_temp.mkdir()
        join = [str(VENV_BIN / "ray"), "start", "--block", f"--address={cluster.gcs_address}",
                "--node-ip-address=127.0.0.1", "--num-cpus=1", f"--node-manager-port={free_port()}",
                f"--object-manager-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                f"--temp-dir={node_temp}", "--disable-usage-stats"]
        script = f"mount -t tmpfs leukotune-private {private} && exec {' '.join(join)}"
        node = start("ray-private-node", ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                     env, folder)
        cluster.processes.append(node)
        cluster.wait_until(lambda nodes: len(nodes) >= 2, "the second node")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def can_unshare_mounts() -> str | None:
    """None when this process may make a private mount namespace (root, or CAP_SYS_ADMIN), else why not."""
    try:
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare not usable: {exc}"
    return None if done.returncode == 0 else f"unshare --mount refused: {done.stderr.strip()[:200]}"
