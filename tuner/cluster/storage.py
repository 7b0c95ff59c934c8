"""Where a study keeps trial checkpoints must be one folder that every node sees.

Trials write checkpoints on the node they run on; the study's driver reads them back for the test side, the model
export and `--resume`. On a cluster of more than one machine that folder must be shared (NFS, EFS, Filestore, a
Lustre or FUSE mount): the default `.leukotune/runs` is on one node's own disk. (Cloud URIs are refused earlier,
by `tuner/preflight.py`.)
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from leukotune.tuner.cluster.capacity import ClusterShape

SHARED_MARKER = ".leukotune-shared"
# Set to 1 when storage_path is shared though its file system type looks local to this node (a cluster file system
# leukotune does not know by name); the marker check at each trial's start still holds it to its word.
SHARED_STORAGE_ENV = "LEUKOTUNE_STORAGE_IS_SHARED"
NETWORK_FILE_SYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "gpfs", "beegfs",
                        "orangefs", "ocfs2", "gfs2", "afs", "wekafs", "9p", "fuse")
PROBE_TIMEOUT_S = 60.0
FIX = "set storage_path to a folder every node mounts (e.g. --set storage_path=/mnt/shared/runs; docs/cluster.md)"


class StorageError(RuntimeError):
    """storage_path cannot hold the study: a cloud URI, not writable, nearly full, or not seen by every node."""


class StorageNotSharedError(StorageError):
    """A trial's node does not see the study's folder: its checkpoints would never reach the driver."""


def filesystem_type(path: Path) -> str:
    """The type of the file system holding `path` (the longest mount point above it in /proc/mounts)."""
    target, best, kind = str(path.resolve()), "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


def is_network_filesystem(kind: str) -> bool:
    return kind.split(".")[0] in NETWORK_FILE_SYSTEMS


def write_marker(directory: Path) -> Path:
    """A file with a fresh token in the study's folder: a node sees the folder when it reads the same token."""
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / SHARED_MARKER
    marker.write_text(uuid.uuid4().hex)
    return marker


def verify_shared_storage(marker: Path) -> None:
    """In a trial, before it writes anything: the driver's marker is there, else StorageNotSharedError."""
    if not marker.is_file():
        raise StorageNotSharedError(
            f"storage_path is not shared: node {ray.util.get_node_ip_address()} does not see {marker.parent}, "
            f"where the study's driver keeps this study; {FIX}")


@ray.remote(num_cpus=0)
def _reads_token(marker: str) -> str | None:
    try:
        return Path(marker).read_text()
    except OSError:
        return None


def check_shared_storage(directory: Path, shape: ClusterShape, log: Callable[[str], None] = print) -> Path:
    """Refuse, before the first trial, a study folder that some node of the cluster does not or would not see.

    The nodes alive now are asked to read a marker written here; nodes the autoscaler may still start on other
    machines cannot be asked yet, so their folder's file system must be a shared one. Returns the marker, which
    each trial checks again on its own node.
    """
    marker = write_marker(directory)
    token = marker.read_text()
    alive = [node for node in ray.nodes() if node.get("Alive")]
    if len(alive) == 1 and not shape.can_add_nodes:
        return marker  # one node, the one this driver runs beside: nothing to share
    # Every node is asked, this driver's own too: its processes may see another disk than the driver does.
    for node in alive:
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        task = _reads_token.options(scheduling_strategy=strategy).remote(str(marker))
        try:
            seen = ray.get(task, timeout=PROBE_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(task, force=True)
            log(f"WARNING: node {node['NodeManagerAddress']} did not answer within {PROBE_TIMEOUT_S:.0f} s; "
                f"whether it sees storage_path {directory} is checked when a trial starts there")
            continue
        if seen != token:
            raise StorageError(f"storage_path {directory} is not shared: node {node['NodeManagerAddress']} does "
                               f"not see it; {FIX}")
    if shape.can_add_nodes and not shape.same_host:
        kind = filesystem_type(directory)
        if not is_network_filesystem(kind) and os.environ.get(SHARED_STORAGE_ENV) != "1":
            workers = ", ".join(t.name for t in shape.node_types if not t.is_head and t.max_count > 0)
            raise StorageError(f"storage_path {directory} is on this node's own disk ({kind}), but this cluster "
                               f"starts nodes of type {workers} on other machines; {FIX} (or set "
                               f"{SHARED_STORAGE_ENV}=1 if this file system is shared)")
    return marker
