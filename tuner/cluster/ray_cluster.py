"""Which Ray cluster a command uses, and joining it."""
from __future__ import annotations

import os
from typing import Callable

import ray


def init_ray(address: str | None, env: dict[str, str], log: Callable[[str], None] = print):
    """Join a cluster (address or RAY_ADDRESS), else start a local one with its dashboard."""
    if ray.is_initialized():
        return ray.get_runtime_context()
    # Tune warns on every fast checkpoint cadence; a few-second epoch is normal here, not a bottleneck.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    runtime_env = {"env_vars": env}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        context = ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        # The dashboard is not optional: Train V2 needs it to release finished runs' placement groups.
        context = ray.init(include_dashboard=True, dashboard_host="127.0.0.1", runtime_env=runtime_env,
                           log_to_driver=True, configure_logging=True, logging_level="WARNING")
    log(f"Ray: {int(ray.cluster_resources().get('CPU', 0))} CPUs, {int(ray.cluster_resources().get('GPU', 0))} GPUs"
        + (f", dashboard {context.dashboard_url}" if context.dashboard_url else ""))
    return context
