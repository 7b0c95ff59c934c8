"""`leukotune serve`: putting the champion's Ray Serve application (`ray_serve.py`) on the cluster, and taking it
off.

Which cluster follows `leukotune tune`'s rule (`cluster/ray_cluster.py`: `--address`, `$RAY_ADDRESS`, the live
`ray start` cluster, else a private local Ray). On a cluster that outlives the command the application is left
running there, as Ray Serve applications are (its controller is a detached actor), and `leukotune serve --stop`
deletes it. A private local Ray lives only as long as the command, so there the command stays in the foreground
until Ctrl-C, SIGTERM or `leukotune serve --stop` (which finds it through `.leukotune/serve.json`).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from leukotune.tuner.serving.ray_serve import (
    APP_NAME,
    DEFAULT_PORT,
    DEFAULT_POLL_S,
    ROUTE_PREFIX,
    ServeSettings,
    build_app,
    current_version,
)

LOOPBACK = "127.0.0.1"
STATE_FILE = Path(".leukotune") / "serve.json"  # the foreground `leukotune serve` on a private Ray
STOP_WAIT_S = 120.0
# Serve's controller, proxies and replicas log every start-up step and every request at INFO, and Ray forwards
# their logs to this console: warnings and errors only, and no access log (the replica logs a moved alias itself).
QUIET_LOGS = {"log_level": "WARNING", "enable_access_log": False}


class ServeError(RuntimeError):
    """The champion cannot be served or stopped as asked; one line a user can act on."""


@dataclass(frozen=True)
class ServeRequest:
    """What `leukotune serve` was asked for."""

    model_uri: str
    tracking_uri: str
    address: str | None = None
    host: str = LOOPBACK
    port: int = DEFAULT_PORT
    replicas: int = 1
    poll_s: float = DEFAULT_POLL_S


def check_request(request: ServeRequest) -> str | None:
    """The version the model URI names now (None for a logged model); a wrong URI, alias or server stops here,
    before Ray starts."""
    from mlflow.exceptions import MlflowException

    from leukotune.tuner.evaluation.logged_models import check_model_uri
    from leukotune.tuner.tracking.client import check_reachable, redact

    check_model_uri(request.model_uri)
    if not request.model_uri.startswith("models:/"):
        raise ServeError(f"--model {request.model_uri}: serve a registered model, models:/NAME@alias (followed when "
                         f"the alias moves), models:/NAME/N or models:/<model_id>")
    if request.replicas < 1 or request.poll_s <= 0 or not 0 < request.port < 65536:
        raise ServeError(f"--replicas {request.replicas}, --poll-s {request.poll_s:g}, --port {request.port}: "
                         f"need at least one replica, a positive period and a port in 1-65535")
    check_reachable(request.tracking_uri)
    try:
        return current_version(request.model_uri, request.tracking_uri)
    except MlflowException as exc:
        first = str(getattr(exc, "message", exc)).strip().splitlines()[0][:300]
        raise ServeError(f"{request.model_uri} at {redact(request.tracking_uri)}: {first}") from None


def _warnings_and_above(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def start_serving(request: ServeRequest, log: Callable[[str], None] = print) -> bool:
    """Deploy the application and wait until its replicas answer; True when Ray is this process's private one (the
    caller then holds it in the foreground)."""
    import ray
    import ray.serve as serve

    from leukotune.tuner.cluster.ray_cluster import PRIVATE, choose_cluster, init_ray

    version = check_request(request)
    private = choose_cluster(request.address, log=lambda _line: None).source == PRIVATE
    if private:  # before anything answers: `serve --stop` must find this process as soon as the port does
        _remember(request)
    init_ray(request.address, {}, log=log)
    # Serve sets its driver logger to INFO as it starts and logs its steps there; this command prints its own
    # lines. A filter on the logger outlasts the level Serve sets.
    logging.getLogger("ray.serve").addFilter(_warnings_and_above)
    # A Serve instance already on the cluster keeps its own HTTP options; ours apply when this starts it.
    serve.start(http_options={"host": request.host, "port": request.port}, logging_config=QUIET_LOGS)
    settings = ServeSettings(request.model_uri, request.tracking_uri, request.poll_s)
    log(f"deploying {request.model_uri}" + (f" (version {version})" if version else "") +
        f" as Ray Serve application {APP_NAME!r}: {request.replicas} replica(s), batches of up to 32")
    try:
        serve.run(build_app(settings, request.replicas), name=APP_NAME, route_prefix=ROUTE_PREFIX, blocking=False,
                  logging_config=QUIET_LOGS)
    except RuntimeError as exc:  # a replica's constructor failed; Serve gives up on the application
        if private:
            _forget_state(os.getpid())
            ray.shutdown()
        raise ServeError(f"the application did not start: {_last_line(exc)}") from None
    log(f"serving on {served_url(request)}/invocations (POST: MLflow's JSON body, or one image's bytes)")
    if "@" in request.model_uri:
        log(f"following {request.model_uri}: a moved alias is served within {request.poll_s:g} s")
    return private


def served_url(request: ServeRequest) -> str:
    host = LOOPBACK if request.host in ("0.0.0.0", "::") else request.host
    return f"http://{host}:{request.port}"


def hold_in_foreground(request: ServeRequest, log: Callable[[str], None] = print) -> None:
    """Keep this process's private Ray (and the application on it) until Ctrl-C, SIGTERM or `serve --stop`."""
    import ray

    # After ray.init, which installs its own SIGTERM handler in a driver: SIGTERM (`serve --stop`) ends the wait
    # below, and the application and Ray are shut down in order.
    signal.signal(signal.SIGTERM, lambda *_: _STOP.set())
    log("Ctrl-C or `leukotune serve --stop` ends it")
    try:
        while not _STOP.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _forget_state(os.getpid())
        # The private Ray ends with this process, Serve's actors with it. serve.shutdown() first would only race
        # the controller's own graceful shutdown, which the raylet then reports as a failed task.
        ray.shutdown()
        log("stopped")


_STOP = threading.Event()  # set by SIGTERM (`serve --stop`) in the foreground `leukotune serve`


def _remember(request: ServeRequest) -> None:
    """Say where this process is (`.leukotune/serve.json`), for `serve --stop`."""
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps({"pid": os.getpid(), "model": request.model_uri, "url": served_url(request)}))


def stop_serving(address: str | None, log: Callable[[str], None] = print) -> bool:
    """Delete the application from the cluster, or end the foreground `leukotune serve` holding a private Ray;
    False when there was nothing to stop."""
    from leukotune.tuner.cluster.ray_cluster import PRIVATE, choose_cluster

    if choose_cluster(address, log=log).source == PRIVATE:
        return _stop_foreground(log)
    import ray
    import ray.serve as serve

    from leukotune.tuner.cluster.ray_cluster import init_ray

    init_ray(address, {}, log=log)
    applications = serve.status().applications
    if APP_NAME not in applications:
        log(f"no application {APP_NAME!r} on this cluster: nothing to stop")
        return False
    serve.delete(APP_NAME)
    if not serve.status().applications:  # Serve ran only ours: its controller and HTTP proxies go too
        serve.shutdown()
    log(f"stopped the Ray Serve application {APP_NAME!r}")
    ray.shutdown()
    return True


def _stop_foreground(log: Callable[[str], None]) -> bool:
    try:
        state = json.loads(STATE_FILE.read_text())
        pid = int(state["pid"])
    except (OSError, ValueError, KeyError):
        log(f"no `leukotune serve` is running here ({STATE_FILE} names none) and no Ray cluster was named "
            f"(--address, RAY_ADDRESS): nothing to stop")
        return False
    if not _is_leukotune_serve(pid):
        _forget_state(pid)
        log(f"the `leukotune serve` of {STATE_FILE} (pid {pid}) is gone: nothing to stop")
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while _is_leukotune_serve(pid):
        if time.monotonic() > deadline:
            raise ServeError(f"`leukotune serve` (pid {pid}) did not stop within {STOP_WAIT_S:.0f} s")
        time.sleep(0.2)
    log(f"stopped `leukotune serve` (pid {pid}, {state.get('model')} at {state.get('url')})")
    return True


def _is_leukotune_serve(pid: int) -> bool:
    """Whether `pid` is still a `leukotune serve` (a reused pid must not get our SIGTERM)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(b"leukotune" in part for part in command) and b"serve" in command


def _forget_state(pid: int) -> None:
    try:
        if int(json.loads(STATE_FILE.read_text()).get("pid", -1)) == pid:
            STATE_FILE.unlink()
    except (OSError, ValueError):
        pass


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1][:400] if lines else type(exc).__name__
