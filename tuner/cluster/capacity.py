"""What a Ray cluster can start: its node types, what each holds and how many of each, read before a study sizes
itself.

A cluster that bills GPUs only while a study runs starts with no workers (`cluster.yaml`: `min_workers: 0`; the
KubeRay example: `replicas: 0`), so the nodes that are up when a study starts say nothing about what it may use.
The node types do. They are read, in this order, from:

1. the cluster config the autoscaler reported to Ray's GCS (KubeRay and hosted Ray report one);
2. the autoscaling config file of this cluster's autoscaler on this node (`ray up` starts it with
   `--autoscaling-config=~/ray_bootstrap_config.yaml`; `LEUKOTUNE_AUTOSCALING_CONFIG` names another file);
3. on KubeRay, the RayCluster resource, turned into node types by Ray's own KubeRay config reader;
4. else the nodes that are alive: a cluster without an autoscaler is what it is.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import yaml

from leukotune.tuner.compat import autoscaling_config_from_ray_cr, kuberay_autoscaling_config, reported_cluster_config

AUTOSCALING_CONFIG_ENV = "LEUKOTUNE_AUTOSCALING_CONFIG"
# Providers whose nodes are processes on this very machine (Ray's fake multi-node provider): they share its disk.
SAME_HOST_PROVIDERS = ("fake_multinode",)
SAME_HOST_MODULES = ("FakeMultiNodeProvider",)
KUBERNETES_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
UNLIMITED = math.inf


@dataclass(frozen=True)
class NodeType:
    """One kind of node: what each holds, and how many the cluster may run (head: exactly one)."""

    name: str
    cpus: float
    gpus: float
    max_count: float  # UNLIMITED when the autoscaler sets no bound
    is_head: bool = False
    resources: dict[str, float] = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        count = "head" if self.is_head else ("any number" if self.max_count == UNLIMITED
                                              else f"up to {int(self.max_count)}")
        return f"{self.name} ({self.cpus:g} CPU, {self.gpus:g} GPU, {count})"

    def bundles(self, bundle: dict[str, float]) -> int:
        """How many copies of `bundle` one node of this type holds."""
        have = {"CPU": self.cpus, "GPU": self.gpus, **self.resources}
        fits = [math.floor(have.get(key, 0.0) / amount + 1e-9) for key, amount in bundle.items() if amount > 0]
        return min(fits) if fits else 0


@dataclass(frozen=True)
class ClusterShape:
    """The node types of a cluster, where they were read, and whether its nodes all run on this machine."""

    node_types: tuple[NodeType, ...]
    source: str
    autoscaling: bool
    # Every node the cluster has or may start runs on this machine, so they all see its file systems.
    same_host: bool = False
    max_workers: float = UNLIMITED  # the cluster-wide bound on worker nodes of all types

    @property
    def has_gpus(self) -> bool:
        return any(t.gpus > 0 and t.max_count > 0 for t in self.node_types)

    @property
    def can_add_nodes(self) -> bool:
        """Whether nodes other than those up now may join (an autoscaler with worker types)."""
        return self.autoscaling and any(not t.is_head and t.max_count > 0 for t in self.node_types)

    def describe(self) -> str:
        ordered = sorted(self.node_types, key=lambda t: not t.is_head)  # the head first, then as declared
        return ", ".join(t.describe() for t in ordered) or "no node types"

    def capacity(self, bundle: dict[str, float]) -> float:
        """Copies of `bundle` the whole cluster holds at its largest: the head plus every worker type at its
        maximum, the fullest types first when the cluster-wide `max_workers` bounds them together."""
        total, workers_left = 0.0, self.max_workers
        for node_type in sorted(self.node_types, key=lambda t: -t.bundles(bundle)):
            per_node = node_type.bundles(bundle)
            if node_type.is_head:
                total += per_node
                continue
            count = min(node_type.max_count, workers_left)
            if per_node == 0 or count <= 0:
                continue
            if count == UNLIMITED:
                return UNLIMITED
            total += per_node * count
            workers_left -= count
        return total


# ---------------------------------------------------------------- from an autoscaling config (ray up, KubeRay)

def shape_from_autoscaling_config(config: dict[str, Any], source: str) -> ClusterShape:
    """Node types of an autoscaling config (the `available_node_types` of `cluster.yaml` and its kin)."""
    head = config.get("head_node_type")
    cluster_max = config.get("max_workers")
    types = []
    for name, spec in (config.get("available_node_types") or {}).items():
        resources = {str(k): float(v) for k, v in (spec.get("resources") or {}).items()}
        is_head = name == head
        # A worker type without max_workers may start as many as the cluster-wide max_workers allows.
        max_count = 1 if is_head else float(spec.get("max_workers", cluster_max if cluster_max is not None
                                                     else UNLIMITED))
        if max_count < 0:
            max_count = UNLIMITED
        extra = {k: v for k, v in resources.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")}
        types.append(NodeType(name, resources.get("CPU", 0.0), resources.get("GPU", 0.0), max_count, is_head,
                              extra))
    provider = config.get("provider") or {}
    same_host = (provider.get("type") in SAME_HOST_PROVIDERS
                 or str(provider.get("module", "")).endswith(SAME_HOST_MODULES))
    bound = UNLIMITED if cluster_max is None or cluster_max < 0 else float(cluster_max)
    return ClusterShape(tuple(types), source, autoscaling=True, same_host=same_host, max_workers=bound)


def shape_from_kuberay_cr(ray_cluster: dict[str, Any], source: str) -> ClusterShape:
    """Node types of a RayCluster resource, derived by Ray's own KubeRay autoscaler code (its worker groups'
    `maxReplicas` and container limits), so leukotune reads the cluster exactly as its autoscaler does."""
    return shape_from_autoscaling_config(autoscaling_config_from_ray_cr(ray_cluster), source)


def _autoscaling_config_path(gcs_address: str) -> Path | None:
    """The config file named by LEUKOTUNE_AUTOSCALING_CONFIG, else the one this cluster's autoscaler runs with
    when it runs on this node (found by its `--gcs-address`; other clusters on the machine have other ports)."""
    if os.environ.get(AUTOSCALING_CONFIG_ENV):
        return Path(os.environ[AUTOSCALING_CONFIG_ENV]).expanduser()
    port = gcs_address.rpartition(":")[2]
    for cmdline in _command_lines():
        if not any(arg.startswith("--autoscaling-config=") for arg in cmdline):
            continue
        gcs = next((arg.split("=", 1)[1] for arg in cmdline if arg.startswith("--gcs-address=")), "")
        if gcs.rpartition(":")[2] == port:
            value = next(arg.split("=", 1)[1] for arg in cmdline if arg.startswith("--autoscaling-config="))
            return Path(value).expanduser()
    return None


def _command_lines() -> list[list[str]]:
    """Every process's command line on this (Linux) node; processes that vanish meanwhile are skipped."""
    lines = []
    for entry in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(entry.read_bytes().decode(errors="replace").split("\0"))
        except OSError:
            continue
    return lines


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read the autoscaling config {path}: {exc}") from None
    if not isinstance(config, dict) or "available_node_types" not in config:
        raise ValueError(f"{path} is not an autoscaling config (no available_node_types)")
    return config


# ---------------------------------------------------------------- from the GCS, Kubernetes, the live nodes

def _shape_from_gcs() -> ClusterShape | None:
    config = reported_cluster_config()
    if config is None or not config.node_group_configs:
        return None
    types = []
    for group in config.node_group_configs:
        resources = {k: float(v) for k, v in group.resources.items()}
        max_count = UNLIMITED if group.max_count < 0 else float(group.max_count)
        extra = {k: v for k, v in resources.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")}
        types.append(NodeType(group.name, resources.get("CPU", 0.0), resources.get("GPU", 0.0), max_count,
                              resources=extra))
    return ClusterShape(tuple(types), "the cluster config reported to Ray's GCS", autoscaling=True)


def _shape_from_kubernetes() -> ClusterShape | None:
    """On a KubeRay pod (RAY_CLUSTER_NAME is set by the operator): the RayCluster read with the pod's service
    account, which KubeRay's in-tree autoscaling allows to read its own cluster."""
    name = os.environ.get("RAY_CLUSTER_NAME")
    if not name or not KUBERNETES_NAMESPACE_FILE.is_file():
        return None
    namespace = KUBERNETES_NAMESPACE_FILE.read_text().strip()
    config = kuberay_autoscaling_config(name, namespace)
    return shape_from_autoscaling_config(config, f"RayCluster {namespace}/{name}")


def shape_from_live_nodes(nodes: list[dict[str, Any]] | None = None) -> ClusterShape:
    """A cluster without an autoscaler: each alive node is a type of its own, one of it."""
    nodes = ray.nodes() if nodes is None else nodes
    types = []
    for node in nodes:
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        extra = {k: float(v) for k, v in resources.items()
                 if k not in ("CPU", "GPU", "memory", "object_store_memory") and not k.startswith("node:")}
        head = "node:__internal_head__" in resources
        types.append(NodeType(str(node.get("NodeManagerAddress", "?")),
                              float(resources.get("CPU", 0)), float(resources.get("GPU", 0)), 1.0,
                              is_head=head, resources=extra))
    return ClusterShape(tuple(types), "the nodes alive now (no autoscaler found)", autoscaling=False)


def read_cluster_shape(log: Callable[[str], None] = print) -> ClusterShape:
    """The joined cluster's node types, from the first source that has them (see the module's docstring)."""
    gcs_address = ray.get_runtime_context().gcs_address
    readers: list[tuple[str, Callable[[], ClusterShape | None]]] = [
        ("GCS", _shape_from_gcs),
        ("autoscaling config", lambda: _shape_from_config_file(gcs_address)),
        ("Kubernetes", _shape_from_kubernetes),
    ]
    for what, reader in readers:
        try:
            shape = reader()
        except Exception as exc:  # noqa: BLE001 - one unreadable source is a warning; the next one is tried
            log(f"WARNING: the cluster's node types could not be read from its {what}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")
            continue
        if shape is not None:
            return shape
    return shape_from_live_nodes()


def _shape_from_config_file(gcs_address: str) -> ClusterShape | None:
    path = _autoscaling_config_path(gcs_address)
    if path is None:
        return None
    return shape_from_autoscaling_config(_read_config_file(path), f"the autoscaling config {path}")


def slots_up(bundle: dict[str, float], workers: int = 1, nodes: list[dict[str, Any]] | None = None) -> int:
    """Trials of `workers` bundles the nodes alive now hold together."""
    bundles = sum(t.bundles(bundle) for t in shape_from_live_nodes(nodes).node_types)
    return bundles // max(workers, 1)


def dumps(shape: ClusterShape) -> str:
    """The shape as JSON, for the study's records."""
    return json.dumps({"source": shape.source, "autoscaling": shape.autoscaling, "same_host": shape.same_host,
                       "max_workers": None if shape.max_workers == UNLIMITED else shape.max_workers,
                       "node_types": [{"name": t.name, "cpus": t.cpus, "gpus": t.gpus, "head": t.is_head,
                                       "max": None if t.max_count == UNLIMITED else t.max_count}
                                      for t in shape.node_types]})
