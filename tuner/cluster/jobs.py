"""Studies as Ray Jobs: submit the project to a cluster's dashboard, follow, inspect and stop its jobs.

The job's entrypoint is `python -m leukotune.tuner.cli tune`, run on the head node with the project uploaded as
its working_dir (the study file) and the submitted tree's code shipped as the `leukotune` package (py_modules, see
shipped_code.py), so the driver and every trial run the code and study file you have here, not the copy installed
on the nodes. Works with Ray's token authentication: the token is found where Ray itself looks for it and is only
ever sent as a request header, never printed.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TextIO
from urllib.parse import urlparse

from ray.exceptions import AuthenticationError
from ray.job_submission import JobSubmissionClient

from leukotune.tuner.cluster.ray_cluster import ClusterError, gcs_endpoint, probe
from leukotune.tuner.cluster.shipped_code import VERSION_ENV, ShippedCode, ship
from leukotune.tuner.compat import ray_auth_token
from leukotune.tuner.config import StudyConfig
from leukotune.tuner.tracking.client import redact

if TYPE_CHECKING:  # imported lazily at run time: ray takes a second to import
    from ray.job_submission import JobDetails, JobSubmissionClient

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")

# Never upload these: environments, caches, local runs and tracking stores (Ray caps a working_dir at 512 MiB,
# and a local .venv would shadow the cluster's own packages).
WORKING_DIR_EXCLUDES = [
    ".venv", "venv", ".git", ".leukotune", "mlruns", "mlartifacts", "mlflow.db", "*.db", "__pycache__", "*.pyc",
    ".pytest_cache", ".mypy_cache", ".ruff_cache", "*.egg-info", "build", "dist", "ray_results", "synthetic_cnmc",
    "bench/results", "e2e-artifacts",
]

# Forwarded to the job when set here: where (and as whom) the study's driver writes to MLflow.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                 "MLFLOW_TRACKING_TOKEN")


# ---------------------------------------------------------------- connecting


def resolve_address(address: str | None) -> str:
    """--address, else $RAY_ADDRESS, else the local dashboard; a bare `host:8265` gets its `http://`."""
    address = (address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS).strip().rstrip("/")
    if "://" not in address and address != "auto" and address.endswith(":8265"):
        address = f"http://{address}"
    return address


def auth_headers() -> dict[str, str]:
    """An Authorization header when a Ray token is available (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token).

    Ray's own client sends the token only when RAY_AUTH_MODE=token is set in this process; a user who copied the
    cluster's token should not also have to know that switch. RAY_AUTH_MODE=disabled still turns it off.
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    try:
        token = ray_auth_token()
    except Exception as exc:  # noqa: BLE001 - an unreadable token file is a user error, reported without the token
        raise ClusterError(f"the Ray authentication token could not be read ({type(exc).__name__}); check "
                           f"RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token") from None
    return {"Authorization": f"Bearer {token.strip()}"} if token and token.strip() else {}


def check_port_open(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not at the HTTP client's (absent) timeout, when nothing answers at the address."""
    parsed = urlparse(address)
    if address != "auto" and "://" not in address:
        # A bare HOST:PORT is a GCS address, which Ray's client would otherwise dial for ever.
        reason = probe(gcs_endpoint(address), timeout_s)
        if reason is not None:
            raise ClusterError(f"no Ray cluster answers at {address}: {reason}; is it up? (the dashboard address, "
                               f"http://HOST:8265, also works)")
        return
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            pass
    except OSError as exc:

        reason = exc.strerror or type(exc).__name__
        raise ClusterError(f"Ray dashboard at {redact(address)} is unreachable ({reason}); is "
                           f"the cluster up? (`ray status` on the head; `ray dashboard cluster.yaml` forwards "
                           f"port 8265)") from None


@contextlib.contextmanager
def _explicit_address() -> Iterator[None]:
    # Ray's client lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override the address it is given; here the address
    # the user typed must win, so hide those variables while the client resolves it.
    saved = {k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str | None = None) -> JobSubmissionClient:
    """A JobSubmissionClient for the cluster, or a ClusterError saying why there is none."""
    address = resolve_address(address)
    check_port_open(address)
    try:
        with _explicit_address():
            return JobSubmissionClient(address, headers=auth_headers() or None)
    except Exception as exc:  # noqa: BLE001 - translated below into one line; never a traceback for the user
        raise _as_cluster_error(exc, address) from None


def _as_cluster_error(exc: BaseException, address: str, job_id: str | None = None) -> ClusterError:
    """One actionable line for what Ray raised; the server's text is trimmed to its first line."""
    address, text = redact(address), redact(str(exc))
    if isinstance(exc, AuthenticationError) or text.startswith(("Authentication required", "Authentication failed")):
        if "required" in text.split("\n", 1)[0].lower() or "Missing" in text:
            disabled = os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled"
            return ClusterError(f"Ray at {address} requires token authentication and "
                                + ("RAY_AUTH_MODE=disabled here keeps the token from being sent" if disabled else
                                   "no token was found here: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, or copy the "
                                   "cluster's token to ~/.ray/auth_token (`ray get-auth-token` on the head prints it)"))
        return ClusterError(f"Ray at {address} rejected the authentication token; use the cluster's token "
                            f"(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")
    if isinstance(exc, ConnectionError):
        return ClusterError(f"Ray dashboard at {address} is unreachable; is the cluster up?")
    if job_id and "404" in text:
        return ClusterError(f"no job {job_id!r} on the Ray cluster at {address} (list them with `ray job list "
                            f"--address {address}`)")
    first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return ClusterError(f"Ray at {address}: {first_line[:300]}")


@contextlib.contextmanager
def cluster_call(client, job_id: str | None = None) -> Iterator[None]:
    """Translate whatever a client request raises into a ClusterError."""
    try:
        yield
    except ClusterError:
        raise
    except Exception as exc:  # noqa: BLE001 - see _as_cluster_error
        raise _as_cluster_error(exc, client.get_address(), job_id) from None


# ---------------------------------------------------------------- submitting

def study_entrypoint(config: Path, working_dir: Path, overrides: list[str], data: str | None) -> str:
    """`python -m leukotune.tuner.cli tune --config <path inside the working_dir> [--set ...] [--data ...]`, quoted.

    Through the package, not the `leukotune` script: the shipped package is what `python` imports, and a node that
    has leukotune's dependencies but no leukotune installed runs the job too."""
    config_abs, root = config.expanduser().resolve(), working_dir.expanduser().resolve()
    try:
        relative = config_abs.relative_to(root)
    except ValueError:
        raise ClusterError(f"--config {config} is outside the project folder {root} that is uploaded to the "
                           f"cluster; move it inside or pass --working-dir") from None
    args = ["python", "-m", "leukotune.tuner.cli", "tune", "--config", relative.as_posix()]
    for override in overrides:
        args += ["--set", override]
    if data:
        args += ["--data", data]
    return shlex.join(args)


def forwarded_env(tracking_uri: str | None) -> dict[str, str]:
    """MLflow settings the job's driver needs: the tracking URI (as seen from the head node) and credentials."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def submission_id(study_name: str) -> str:
    """Readable and unique: `leukotune-<study>-<date>-<time>-<4 hex>`."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", study_name).strip("-") or "study"
    return f"leukotune-{safe}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def submit(client: JobSubmissionClient, entrypoint: str, working_dir: Path, env: dict[str, str], job_name: str,
           metadata: dict[str, str] | None = None, code: ShippedCode | None = None) -> str:
    """Upload the working_dir (minus the excludes) and the staged code, if any, and start the entrypoint on the head;
    returns the job id. Ray uploads both before `submit_job` returns: the staging folder may go afterwards."""
    runtime_env: dict[str, Any] = {"working_dir": str(working_dir.expanduser().resolve()),
                                   "excludes": list(WORKING_DIR_EXCLUDES)}
    if code is not None:
        runtime_env["py_modules"] = [str(code.package)]
        env = {**env, VERSION_ENV: code.version}
    if env:
        runtime_env["env_vars"] = dict(env)
    with cluster_call(client):
        return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=job_name,
                                 metadata={"leukotune": "study", **(metadata or {})})


def submit_study(client: JobSubmissionClient, study: StudyConfig, config: Path, overrides: list[str],
                 data: str | None, working_dir: Path, tracking_uri: str | None,
                 log: Callable[[str], None] = print) -> str:
    """Submit the (already validated) study as a job whose entrypoint is `leukotune tune` with the same flags, running
    the submitted tree's code on the driver and every worker."""
    entrypoint = study_entrypoint(config, working_dir, overrides, data)
    env = forwarded_env(tracking_uri)
    uri = env.get("MLFLOW_TRACKING_URI")
    if not uri:
        log("WARNING: MLFLOW_TRACKING_URI is not set: the job will track into SQLite inside its temporary "
            "working_dir on the head node. Point it at the MLflow server (e.g. --tracking-uri "
            "http://127.0.0.1:5000 for the server on the head).")
    elif uri.startswith(("sqlite:", "file:")) or uri.startswith("/"):
        log(f"WARNING: tracking URI {redact(uri)} is a local store: it names a path on the head node, not here")
    if not Path(study.storage_path).expanduser().is_absolute():
        log(f"WARNING: storage_path {study.storage_path!r} is relative: on the cluster it lands in the job's "
            f"temporary working_dir, which Ray deletes and other nodes cannot read. Use a shared folder, e.g. "
            f"--set storage_path=/mnt/shared/runs")
    log(f"entrypoint: {entrypoint}")
    log(f"working_dir: {working_dir.expanduser().resolve()} (excluding {', '.join(WORKING_DIR_EXCLUDES[:6])}, ...)")
    if uri:
        log(f"MLflow: {redact(uri)}")
    with tempfile.TemporaryDirectory(prefix="leukotune-code-") as staging:
        code = ship(working_dir, Path(staging))
        log(code.describe())
        return submit(client, entrypoint, working_dir, env, submission_id(study.name),
                      {"study": study.name, "code_version": code.version}, code)


# ---------------------------------------------------------------- watching

def job_info(client: JobSubmissionClient, job_id: str) -> JobDetails:
    with cluster_call(client, job_id):
        return client.get_job_info(job_id)


def job_status(client, job_id: str) -> str:
    return str(job_info(client, job_id).status)


def job_logs(client: JobSubmissionClient, job_id: str) -> str:
    with cluster_call(client, job_id):
        return client.get_job_logs(job_id)


def stop_job(client: JobSubmissionClient, job_id: str, wait_s: float = 30.0) -> str:
    """Ask the job to stop (Ray sends SIGTERM, then SIGKILL) and wait briefly for a final status."""
    with cluster_call(client, job_id):
        client.stop_job(job_id)
    return wait_for_terminal(client, job_id, timeout_s=wait_s)


def wait_for_terminal(client, job_id: str, timeout_s: float = 60.0,
                      poll_s: float = 0.5) -> str:
    """The job's status once it is final, or its current one when `timeout_s` runs out."""
    deadline = time.monotonic() + timeout_s
    status = job_status(client, job_id)
    while status not in TERMINAL_STATES and time.monotonic() < deadline:
        time.sleep(poll_s)
        status = job_status(client, job_id)
    return status


def follow(client: JobSubmissionClient, job_id: str, out: TextIO = sys.stdout) -> str:
    """Stream the job's logs until it ends; returns its final status.

    `tail_job_logs` is an async generator over a websocket: run it in its own event loop. The socket closes when
    the job ends; the status is then polled, since the stream can close a moment before the status is final.
    """

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    with cluster_call(client, job_id):
        asyncio.run(tail())
    return wait_for_terminal(client, job_id, timeout_s=60.0)


def exit_code_for(status: str) -> int:
    """0 when the job succeeded, 1 when it failed or was stopped (or is somehow still running)."""
    return 0 if status == "SUCCEEDED" else 1


def describe_job(info: JobDetails) -> list[str]:
    """Status lines for a job, leaving out its runtime_env (it may carry MLflow credentials)."""
    lines = [f"job:        {info.submission_id or info.job_id}", f"status:     {info.status}",
             f"entrypoint: {info.entrypoint}"]
    for label, ms in (("started", info.start_time), ("ended", info.end_time)):
        if ms:
            lines.append(f"{label + ':':<11} {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ms / 1000))}")
    if info.message:
        lines.append(f"message:    {info.message.strip().splitlines()[0][:300]}")
    if getattr(info, "driver_exit_code", None) is not None:
        lines.append(f"exit code:  {info.driver_exit_code}")
    return lines
