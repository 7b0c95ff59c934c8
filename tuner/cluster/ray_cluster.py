"""Which Ray cluster a command uses, and joining it.

The rule: `--address`, else `$RAY_ADDRESS`, else the cluster `ray start` recorded on this machine when it answers,
else a private local Ray. Every address is probed for a few seconds before `ray.init`, because `ray.init` retries a
GCS that is gone for ever ("Failed to connect to GCS ... within 5 seconds", over and over).
"""
from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import ray

from leukotune.tuner.compat import ask_gcs_cluster_id, canonical_gcs_address, ray_address_file

PROBE_TIMEOUT_S = 3.0
PRIVATE, RECORDED = "private", "ray start"


class ClusterError(RuntimeError):
    """The cluster cannot be reached or refused a request; the message is one line a user can act on."""


@dataclass(frozen=True)
class ClusterChoice:
    """Where `ray.init` goes: `address` None with source PRIVATE starts a private local Ray."""

    address: str | None
    source: str  # "--address", "RAY_ADDRESS", RECORDED or PRIVATE

    def describe(self) -> str:
        if self.source == PRIVATE:
            return "Ray: starting a private local Ray (no --address, no RAY_ADDRESS, no live `ray start` cluster)"
        if self.source == RECORDED:
            return f"Ray: joining the Ray cluster started with `ray start` at {self.address}"
        return f"Ray: joining the Ray cluster at {self.address} ({self.source})"


def recorded_address() -> tuple[str | None, Path]:
    """The GCS address the newest `ray start` on this machine recorded (Ray's own lookup), and the record's path."""
    record = ray_address_file()
    try:
        text = record.read_text().strip()
    except OSError:
        return None, record
    return text or None, record


def gcs_endpoint(address: str) -> str:
    """`host:port` as Ray will dial it (`localhost` becomes the node's IP); ClusterError when it is not one."""
    bare = address.removeprefix("ray://")
    try:
        endpoint = canonical_gcs_address(bare)
    except ValueError:
        endpoint = None
    if not endpoint:
        raise ClusterError(f"Ray address {address!r} is not HOST:PORT (the head's GCS port, 6379 by default) "
                           f"or ray://HOST:PORT")
    return endpoint


def probe(endpoint: str, timeout_s: float = PROBE_TIMEOUT_S, ask_gcs: bool = True) -> str | None:
    """None when the GCS (or, ask_gcs=False, anything) answers at `host:port` within the timeout, else why not."""
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        return exc.strerror or f"no answer in {timeout_s:g} s"
    if not ask_gcs:
        return None
    # An open port is not yet a GCS (a stale record may point at a port another program took since, and some
    # networks accept every connection), so ask the GCS a question; a token refusal is an answer too.
    try:
        ask_gcs_cluster_id(endpoint, timeout_s)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
            return f"nothing there answers as a Ray GCS within {timeout_s:g} s ({exc.code().name})"
    return None


def choose_cluster(address: str | None, log: Callable[[str], None] = print) -> ClusterChoice:
    """Apply the rule above; a named cluster that does not answer is a ClusterError, a stale record a warning."""
    if address:
        return _named(address.strip(), "--address")
    if os.environ.get("RAY_ADDRESS", "").strip():
        return _named(os.environ["RAY_ADDRESS"].strip(), "RAY_ADDRESS")
    recorded, record = recorded_address()
    if recorded is None:
        return ClusterChoice(None, PRIVATE)
    reason = probe(gcs_endpoint(recorded))
    if reason is None:
        return ClusterChoice(recorded, RECORDED)
    # No address was asked for, so the study still runs; the record is a leftover of a `ray start` that died.
    log(f"warning: the Ray cluster `ray start` recorded at {recorded} ({record}) does not answer ({reason}); "
        f"using a private local Ray instead (`ray stop` clears the record)")
    return ClusterChoice(None, PRIVATE)


def _named(address: str, source: str) -> ClusterChoice:
    """An address the user gave: it answers, or the command stops here with one line (exit 2)."""
    if address == "local":
        return ClusterChoice(None, PRIVATE)
    if address.startswith(("http://", "https://")):
        raise ClusterError(f"{source} {address} is a dashboard address (for `leukotune submit` or `ray job submit`); "
                           f"tune and train join the head's GCS address, HOST:6379 by default")
    if address == "auto":
        recorded, record = recorded_address()
        if recorded is None:
            raise ClusterError(f"{source}=auto but no `ray start` cluster is recorded on this machine ({record}); "
                               f"start one with `ray start --head` or name its HOST:PORT")
        address = recorded
    # A ray:// address is Ray Client's server, not the GCS: only its port can be checked here.
    reason = probe(gcs_endpoint(address), ask_gcs=not address.startswith("ray://"))
    if reason is not None:
        raise ClusterError(f"no Ray cluster answers at {address} ({source}): {reason}; is it up (`ray status "
                           f"--address {address}`)? Leave out --address and RAY_ADDRESS for a private local Ray")
    return ClusterChoice(address, source)


def init_ray(address: str | None, env: dict[str, str], log: Callable[[str], None] = print):
    """Join the cluster the rule picks, else start a private local one with its dashboard; say which."""
    if ray.is_initialized():
        return ray.get_runtime_context()
    choice = choose_cluster(address, log)
    log(choice.describe())
    runtime_env = {"env_vars": env}
    if choice.source == PRIVATE:
        # "local", not None: None would make Ray read the `ray start` record (or RAY_ADDRESS) again.
        # The dashboard is not optional: Train V2 needs it to release finished runs' placement groups.
        context = ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                           runtime_env=runtime_env, log_to_driver=True, configure_logging=True,
                           logging_level="WARNING")
    else:
        # The recorded cluster joins through Ray's own default (None) so Ray applies its local-cluster token rules.
        target = None if choice.source == RECORDED else choice.address
        try:
            context = ray.init(address=target, runtime_env=runtime_env, log_to_driver=True, logging_level="WARNING")
        except ConnectionError as exc:
            raise ClusterError(f"Ray at {choice.address} ({choice.source}): {str(exc).splitlines()[0]}") from None
    log(f"Ray: {int(ray.cluster_resources().get('CPU', 0))} CPUs, {int(ray.cluster_resources().get('GPU', 0))} GPUs"
        + (f", dashboard {context.dashboard_url}" if context.dashboard_url else ""))
    return context
