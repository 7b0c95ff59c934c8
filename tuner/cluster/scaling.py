"""Growing the cluster for a study: ask the autoscaler for its trials' slots, wait for the first, then let go.

A cluster that starts with no workers has nothing to run a trial on until the autoscaler has started a node, which
takes minutes on a cloud. The study asks for all its slots at once (`ray.autoscaler.sdk.request_resources`, so the
nodes start together rather than one per scaling round), waits until one trial fits, and starts: Tune's own
pending trials keep asking for the rest. The explicit request is dropped as soon as Tune has taken over (and in
any case when the study ends), so that a study killed later leaves no standing request holding GPUs up.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import ray
from ray.autoscaler.sdk import request_resources

from leukotune.tuner.cluster.capacity import ClusterShape, slots_up
from leukotune.tuner.cluster.ray_cluster import ClusterError
from leukotune.tuner.cluster.trial_resources import TrialResources

POLL_S = 1.0


def request_slots(resources: TrialResources, slots: int) -> None:
    """Ask the autoscaler for `slots` trials' worth of bundles (a hint; it starts what its node types allow)."""
    request_resources(bundles=[resources.capacity_bundle()] * (slots * resources.workers))


def release_request() -> None:
    """Withdraw the explicit request: from now on only running and pending work keeps nodes up."""
    if ray.is_initialized():
        request_resources(bundles=[])


def launch_summary() -> str:
    """What the autoscaler is doing, for the waiting line: nodes starting and launches that failed."""
    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
    except Exception:  # noqa: BLE001 - only autoscaler v2 reports this; the line is fine without it
        return ""
    starting = sum(r.count for r in status.pending_launches) + len(status.pending_nodes)
    parts = [f"{starting} node(s) starting"] if starting else []
    failed = [r for r in status.failed_launches if r.details]
    if failed:
        parts.append(f"last failed launch: {failed[-1].ray_node_type_name}: {failed[-1].details.splitlines()[0]}")
    return f" ({'; '.join(parts)})" if parts else ""


def wait_for_slots(resources: TrialResources, shape: ClusterShape, wanted: int, timeout_s: float,
                   show: Callable[..., None], clock: Callable[[], float] = time.monotonic) -> int:
    """Block until at least one trial fits on the nodes that are up; returns how many fit then.

    `show(line, final=False)` gets the status line whenever it changes (`waiting for workers: 0 of 4 GPU slots
    up`), and `final=True` with the last one. After
    `timeout_s` with no slot, a ClusterError says what was waited for and where to look.
    """
    up = slots_up(resources.capacity_bundle(), resources.workers)
    if up >= 1 or not shape.can_add_nodes:
        return up
    request_slots(resources, wanted)
    deadline, last = clock() + timeout_s, ""
    while up < 1:
        if clock() >= deadline:
            show(f"waiting for workers: gave up after {timeout_s:.0f} s", final=True)
            raise ClusterError(f"no worker arrived within {timeout_s:.0f} s (resources.wait_for_nodes_s) for a "
                               f"trial of {resources.describe()} on node types {shape.describe()}"
                               f"{launch_summary()}; check `ray status` and the autoscaler's log (monitor.log on "
                               f"the head)")
        line = f"waiting for workers: {up} of {wanted} {resources.slot_name()} up{launch_summary()}"
        if line != last:
            show(line)
            last = line
        time.sleep(POLL_S)
        up = slots_up(resources.capacity_bundle(), resources.workers)
    show(f"waiting for workers: {min(up, wanted)} of {wanted} {resources.slot_name()} up; starting the study "
         f"(the autoscaler starts the rest as trials wait)", final=True)
    return up
