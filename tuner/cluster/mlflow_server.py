"""`leukotune mlflow-server`: MLflow's tracking server with leukotune's defaults.

SQLite and artifacts under `.leukotune/server/` (PostgreSQL for teams), bound to loopback unless exposing is
asked for, and artifacts served through the server (`--serve-artifacts`) so trial drivers and workers on other
nodes log over HTTP instead of needing the server's disk or cloud credentials.

A PostgreSQL backend is tried before the server starts (one line and exit 2 when it does not answer, refuses the
password or lacks the database), its tables are set up one server at a time (replicas may start together), and its
password reaches the server in PGPASSWORD, not on its command line, where `ps` and process listings would show it
to every user of the machine.
"""
from __future__ import annotations

import importlib.util
import ipaddress
import os
import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from leukotune.tuner.tracking.client import redact
from leukotune.tuner.tracking.postgres import (PASSWORD_ENV, connection_problem, create_mlflow_schema, is_postgres,
                                               split_password)

LOOPBACK = "127.0.0.1"
EXPOSED = "0.0.0.0"
SERVER_DIR = Path(".leukotune") / "server"
AUTH_ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"


class ServerError(RuntimeError):
    """The server cannot start as asked; the message says what to change."""


@dataclass(frozen=True)
class ServerPlan:
    """Everything decided before `mlflow server` starts: the command and what to tell the user."""

    command: list[str]
    env: dict[str, str]
    url: str
    backend_store_uri: str
    artifacts_destination: str
    warnings: list[str]
    password_in_env: bool = False  # the database password was taken out of the command line


def default_backend_uri(root: Path) -> str:
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def expose_warnings(host: str, auth: bool) -> list[str]:
    """What binding beyond loopback means, and how to make it safe."""
    if is_loopback(host):
        return []
    if not auth:
        return [f"WARNING: MLflow binds {host}: anyone who can reach this port can read and change every experiment "
                f"and registered model. Add --auth (MLflow's `--app-name basic-auth`; set {AUTH_ADMIN_PASSWORD_ENV} "
                f"for the first start), allow the port only from the cluster's network (security group / "
                f"firewall), or keep 127.0.0.1 and reach it through an SSH tunnel."]
    return [f"WARNING: MLflow binds {host} with basic auth: passwords travel in clear text over plain HTTP; put a "
            f"TLS reverse proxy in front of it for access from outside the cluster's network."]


def write_auth_config(root: Path) -> Path:
    """A basic-auth config keeping its user database beside the server's (MLflow's default is ./basic_auth.db).

    No password is written: MLflow reads the first admin password from MLFLOW_AUTH_ADMIN_PASSWORD.
    """
    path = root / "basic_auth.ini"
    path.write_text("[mlflow]\n"
                    "default_permission = READ\n"
                    f"database_uri = sqlite:///{(root / 'basic_auth.db').resolve()}\n"
                    "admin_username = admin\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return path


def auth_env(root: Path, env: dict[str, str]) -> dict[str, str]:
    """What MLflow's basic-auth app needs beyond the flag: its extra, a config, an admin password, a CSRF secret."""
    if importlib.util.find_spec("flask_wtf") is None:
        raise ServerError("--auth needs MLflow's auth extra (Flask-WTF): pip install 'mlflow[auth]'")
    extra: dict[str, str] = {}
    if "MLFLOW_AUTH_CONFIG_PATH" not in env:
        extra["MLFLOW_AUTH_CONFIG_PATH"] = str(write_auth_config(root))
        if not (root / "basic_auth.db").exists() and not env.get(AUTH_ADMIN_PASSWORD_ENV):
            raise ServerError(f"--auth: set {AUTH_ADMIN_PASSWORD_ENV} for the first start; MLflow creates the "
                              f"`admin` user with it (change it later with MLflow's update-password API)")
    if not env.get(SECRET_KEY_ENV):
        extra[SECRET_KEY_ENV] = read_or_create_secret(root / "flask_secret_key")
    return extra


def read_or_create_secret(path: Path) -> str:
    """A CSRF signing key kept beside the server's data, so restarts keep sessions valid; readable by us only."""
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip()


def check_port_free(host: str, port: int) -> None:
    """Refuse at once when the port is taken (another MLflow server?), rather than after MLflow's own start-up."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the server itself binds: a port left in TIME_WAIT by a stopped server is free to reuse.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServerError(f"cannot listen on {host}:{port} ({exc.strerror}); is another server running there? "
                              f"choose another --port") from None


def plan_server(host: str | None = None, port: int = 5000, backend_store_uri: str | None = None,
                artifacts_destination: str | None = None, expose: bool = False, auth: bool = False,
                workers: int = 2, allowed_hosts: str | None = None, root: Path = SERVER_DIR) -> ServerPlan:
    """Build the `mlflow server` command line; creates the default storage folder."""
    host = host or (EXPOSED if expose else LOOPBACK)
    root = root.expanduser().resolve()
    if not (backend_store_uri and artifacts_destination) or auth:
        root.mkdir(parents=True, exist_ok=True)  # only when a default or the auth database lives there
    backend = backend_store_uri or default_backend_uri(root)
    artifacts = artifacts_destination or str(root / "mlartifacts")
    env = dict(os.environ)
    served_backend, password = split_password(backend) if is_postgres(backend) else (backend, None)
    if password is not None:
        env[PASSWORD_ENV] = password  # libpq in every server worker reads it; `ps` shows no environment
    command = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
               "--backend-store-uri", served_backend, "--serve-artifacts", "--artifacts-destination", artifacts,
               "--workers", str(workers)]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    if auth:
        command += ["--app-name", "basic-auth"]
        env.update(auth_env(root, env))
    shown = "127.0.0.1" if host in (EXPOSED, "::") else host
    return ServerPlan(command=command, env=env, url=f"http://{shown}:{port}", backend_store_uri=backend,
                      artifacts_destination=artifacts, warnings=expose_warnings(host, auth),
                      password_in_env=password is not None)


def prepare_backend_store(plan: ServerPlan, timeout_s: float = 5.0) -> None:
    """Refuse at once a PostgreSQL store that cannot be used, rather than after MLflow's workers start failing; then
    set up its tables one server at a time, so several replicas may start together on a new database."""
    if not is_postgres(plan.backend_store_uri):
        return
    where = f"backend store {redact(plan.backend_store_uri)}"
    problem = connection_problem(plan.backend_store_uri, timeout_s)
    if problem:
        raise ServerError(f"{where}: {redact(problem)}")
    from mlflow.exceptions import MlflowException
    from mlflow.utils.server_cli_utils import resolve_default_artifact_root

    # The artifact root MLflow's server gives new experiments when it serves artifacts (mlflow-artifacts:/).
    artifact_root = resolve_default_artifact_root(True, None, plan.backend_store_uri)
    try:
        create_mlflow_schema(plan.backend_store_uri, artifact_root)
    except MlflowException as exc:  # an out-of-date schema: its message says to run `mlflow db upgrade`
        raise ServerError(f"{where}: {redact(' '.join(str(exc.message).split()))}") from None


def describe(plan: ServerPlan) -> list[str]:
    """Lines printed before the server starts (credentials in a database URI are redacted)."""
    return [*plan.warnings,
            f"MLflow server: {plan.url}  (UI and REST API; Ctrl-C stops it)",
            f"  backend store: {redact(plan.backend_store_uri)}",
            *([f"  (its password reaches the server in {PASSWORD_ENV}, not on its command line)"]
              if plan.password_in_env else []),
            f"  artifacts:     {redact(plan.artifacts_destination)} (served through the server)",
            f"  point leukotune at it: export MLFLOW_TRACKING_URI={plan.url}"]


def exec_server(plan: ServerPlan) -> None:
    """Replace this process with `mlflow server`, so signals (Ctrl-C, a supervisor's SIGTERM) reach it directly."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(plan.command[0], plan.command, plan.env)
