"""Real servers for the slow tests: a token-authenticated Ray head (and extra nodes), an MLflow server.

Each process starts in its own session with its own Ray temp dir and free ports, so a test never touches
another Ray on this machine (no `ray stop`, which would end every Ray of the user), and `stop()` ends exactly
the processes it started, even when the test failed.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_token(folder: Path) -> Path:
    """A fresh Ray auth token in a private file (the tests never use the user's ~/.ray/auth_token)."""
    path = folder / "ray_auth_token"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return path


def ray_env(token_file: Path) -> dict[str, str]:
    """Environment for Ray processes and clients: token auth on, this venv's commands first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


@dataclass
class Background:
    """A started process and its log; stop() sends SIGTERM, then SIGKILL to its whole process group."""

    name: str
    process: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self, grace_s: float = 40.0) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever the process left behind in its group (its session started with it)
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait(timeout=10)


def start(name: str, command: list[str], env: dict[str, str], log_dir: Path, cwd: Path | None = None) -> Background:
    log = log_dir / f"{name}.log"
    handle = log.open("w")
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                               start_new_session=True)
    handle.close()
    return Background(name, process, log)


def wait_http(url: str, ok: tuple[int, ...] = (200,), timeout_s: float = 90.0,
              process: Background | None = None) -> None:
    """Poll `url` until it answers with one of `ok` (401 counts when auth is on); fail with the process's log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise RuntimeError(f"{process.name} exited ({process.process.returncode}):\n{process.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                if response.status in ok:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s" +
                       (f":\n{process.tail()}" if process else ""))


@dataclass
class RayCluster:
    """A Ray head (plus any joined nodes) on 127.0.0.1 with token auth and its own temp dir."""

    gcs_address: str
    dashboard_url: str
    env: dict[str, str]
    temp_dir: Path
    log_dir: Path
    nodes: list[Background] = field(default_factory=list)
    extra_temp_dirs: list[Path] = field(default_factory=list)

    def add_node(self, num_cpus: int = 1) -> Background:
        """Another raylet on this machine joining the head, with its own ports and its own temp dir.

        Its own temp dir, as a separate machine would have: sharing the head's, both nodes unpack a job's
        working_dir into the same folder, and the second unpacking wipes what the job's driver wrote there.
        """
        index = len(self.nodes)
        temp_dir = Path(tempfile.mkdtemp(prefix="lkt-", dir="/tmp"))
        self.extra_temp_dirs.append(temp_dir)
        command = [str(VENV_BIN / "ray"), "start", "--block", f"--address={self.gcs_address}",
                   "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", f"--node-manager-port={free_port()}",
                   f"--object-manager-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                   f"--temp-dir={temp_dir}", "--disable-usage-stats"]
        node = start(f"ray-node-{index}", command, self.env, self.log_dir)
        self.nodes.append(node)
        return node

    def wait_for_nodes(self, count: int, timeout_s: float = 90.0) -> None:
        command = [str(VENV_BIN / "ray"), "status", f"--address={self.gcs_address}"]
        deadline = time.monotonic() + timeout_s
        output = ""
        while time.monotonic() < deadline:
            output = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60).stdout
            active = output.split("Active:", 1)[-1].split("Pending:", 1)[0]
            if active.count("node_") >= count:
                return
            time.sleep(1.0)
        raise TimeoutError(f"the cluster did not reach {count} nodes:\n{output}\n{self.nodes[-1].tail()}")

    def stop(self) -> None:
        """Workers first, then the head; each SIGTERM lets its raylet drain and end its own processes."""
        for node in reversed(self.nodes):
            node.stop()
        for folder in (self.temp_dir, *self.extra_temp_dirs):
            shutil.rmtree(folder, ignore_errors=True)


def post_invocations(url: str, body: bytes | dict, content_type: str = "application/json", query: str = "") -> tuple[int, dict]:
    """POST a body to a model server's /invocations: (status, JSON answer), an error's text as {"message"}."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/invocations{query}", data=data, method="POST",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        try:
            return error.code, json.loads(text)
        except json.JSONDecodeError:
            return error.code, {"message": text}


def start_ray_head(log_dir: Path, env: dict[str, str], num_cpus: int = 1) -> RayCluster:
    """`ray start --head --block` on loopback with free ports; returns once the Jobs API answers."""
    temp_dir = Path(tempfile.mkdtemp(prefix="lkt-", dir="/tmp"))  # short: Ray's socket paths must fit 107 chars
    gcs_port, dashboard_port = free_port(), free_port()
    command = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               f"--port={gcs_port}", f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1",
               f"--num-cpus={num_cpus}", "--include-dashboard=true", f"--ray-client-server-port={free_port()}",
               f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    cluster = RayCluster(f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}", env, temp_dir, log_dir)
    head = start("ray-head", command, env, log_dir)
    cluster.nodes.append(head)
    try:
        wait_http(f"{cluster.dashboard_url}/api/version", ok=(200, 401), process=head)
    except BaseException:
        cluster.stop()
        raise
    return cluster


# ---------------------------------------------------------------- a throwaway PostgreSQL (MLflow's team store)

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")  # Debian's postgresql 15 (the `postgresql` package)


def as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its tools as the `postgres` user Debian's package creates."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class Postgres:
    """A PostgreSQL cluster of its own in a temp folder: TCP on 127.0.0.1 (password auth), its unix socket in the
    folder (trusted, for the superuser that creates roles and databases)."""

    folder: Path
    port: int

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.folder / "socket"

    def uri(self, user: str, password: str, database: str, port: int | None = None) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{port or self.port}/{database}"

    def superuser(self, database: str = "postgres"):
        """An autocommit connection as `postgres` through the unix socket (no password: the socket is trusted)."""
        import psycopg

        return psycopg.connect(host=str(self.socket_dir), port=self.port, user="postgres", dbname=database,
                               autocommit=True, connect_timeout=10)

    def create_database(self, owner: str, password: str, database: str) -> None:
        """A login role with this password and a database it owns."""
        from psycopg import sql

        with self.superuser() as connection:
            # The password as a literal in the statement: DDL takes no bound parameters. Never logged: the
            # cluster logs statements only when they fail (log_min_error_statement).
            connection.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(owner),
                                                                                   sql.Literal(password)))
        self.add_database(owner, database)

    def add_database(self, owner: str, database: str) -> None:
        """Another (empty) database of an existing role."""
        from psycopg import sql

        with self.superuser() as connection:
            connection.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database),
                                                                             sql.Identifier(owner)))

    def count(self, database: str, table: str, where: str = "TRUE") -> int:
        """Rows of `table` (0 when MLflow has not created it yet)."""
        with self.superuser(database) as connection:
            if connection.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
                return 0
            return connection.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0]

    def stop(self) -> None:
        """`pg_ctl stop -m fast` (open sessions are ended), then the folder goes; also after a failed start."""
        if (self.data / "postmaster.pid").exists():
            subprocess.run(as_postgres_user([str(POSTGRES_BIN / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast",
                                             "-w", "-t", "60"]), capture_output=True, text=True, timeout=120)
        shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres() -> Postgres:
    """initdb + pg_ctl start on a free loopback port; returns once the server accepts connections."""
    folder = Path(tempfile.mkdtemp(prefix="lkt-pg-", dir="/tmp"))  # short: the socket path must fit 107 chars
    server = Postgres(folder, free_port())
    server.socket_dir.mkdir()
    if os.geteuid() == 0:
        for path in (folder, server.socket_dir):
            shutil.chown(path, "postgres", "postgres")
    try:
        subprocess.run(as_postgres_user([str(POSTGRES_BIN / "initdb"), "-D", str(server.data), "-U", "postgres",
                                         "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                                         "--no-sync"]), check=True, capture_output=True, text=True, timeout=180)
        # fsync off: a throwaway cluster on a shared test machine need not survive a power cut.
        options = (f"-c listen_addresses=127.0.0.1 -p {server.port} -k {server.socket_dir} -c fsync=off "
                   f"-c max_connections=200")
        subprocess.run(as_postgres_user([str(POSTGRES_BIN / "pg_ctl"), "start", "-D", str(server.data), "-l",
                                         str(server.log), "-w", "-t", "120", "-o", options]),
                       check=True, capture_output=True, text=True, timeout=180)
    except subprocess.CalledProcessError as exc:
        log = server.log.read_text(errors="replace")[-3000:] if server.log.exists() else ""
        server.stop()
        raise RuntimeError(f"PostgreSQL did not start: {exc.stdout}{exc.stderr}{log}") from None
    except BaseException:
        server.stop()
        raise
    return server
