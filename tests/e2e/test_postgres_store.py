"""A team's tracking store on a real database: a throwaway PostgreSQL 15, `leukotune mlflow-server` on it, two smoke
studies against that server at the same time, promotion and prediction through it, two servers (replicas) starting
together on a new database; and the PostgreSQL stores that cannot work (no server, a wrong password, no database,
an out-of-date schema) refused in one line before anything starts.

The database password is random per run and must appear in no output, no log and no server command line.
`make e2e` runs it (CI too). PostgreSQL is stopped and its folder removed whatever fails.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from conftest import SMOKE, TINY, require_cnmc_sample, require_postgres, sets
from e2e.servers import Background, Postgres, free_port, start, start_postgres, wait_http

pytestmark = pytest.mark.e2e

LEUKOTUNE = str(Path(sys.executable).parent / "leukotune")
ARTIFACTS = Path(__file__).resolve().parents[2] / "e2e-artifacts" / "postgres"
EXPERIMENT = "pg-team"  # both studies track into one experiment, as a team's studies do
MODEL_URI = f"models:/leukotune-{EXPERIMENT}@champion"
TRIALS = 2  # per study
STUDY = [*sets(TINY + [f"tune.num_samples={TRIALS}", "train.epochs=2", f"tracking.experiment={EXPERIMENT}"])]
USER = DATABASE = "mlflow_team"


@dataclass
class Store:
    """PostgreSQL, the MLflow server on it, and every line any command printed (searched for the password)."""

    postgres: Postgres
    password: str
    server: Background
    url: str
    folder: Path
    outputs: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        return user_env(self.folder, **extra)

    def leukotune(self, name: str, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                  timeout: float = 300) -> subprocess.CompletedProcess:
        done = subprocess.run([LEUKOTUNE, *args], cwd=cwd or self.folder, capture_output=True, text=True,
                              timeout=timeout, env=env or self.env(MLFLOW_TRACKING_URI=self.url))
        self.outputs[name] = done.stdout + done.stderr
        return done


def user_env(folder: Path, **extra: str) -> dict[str, str]:
    """A user's shell: nothing of this machine's MLflow, Ray or PostgreSQL settings (no PGPASSWORD: the password
    travels in the URI only); its own cache."""
    values = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_", "PG"))}
    values.update(LEUKOTUNE_CACHE_DIR=str(folder / "cache"), LEUKOTUNE_MIN_FREE_GB="0.1", **extra)
    return values


@pytest.fixture(scope="module")
def postgres():
    require_postgres()
    server = start_postgres()
    try:
        yield server
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        if server.log.exists():
            shutil.copy(server.log, ARTIFACTS / "postgres.log")
        server.stop()
    assert not server.folder.exists()


@pytest.fixture(scope="module")
def store(postgres, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pg-store")
    password = f"pw-{secrets.token_hex(16)}"
    postgres.create_database(USER, password, DATABASE)
    port = free_port()
    # Two server workers on one database: what SQLite on a shared volume cannot take.
    command = [LEUKOTUNE, "mlflow-server", "--port", str(port), "--workers", "2",
               "--backend-store-uri", postgres.uri(USER, password, DATABASE),
               "--artifacts-destination", str(folder / "artifacts")]
    server = start("mlflow-pg", command, user_env(folder), folder, cwd=folder)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", timeout_s=180, process=server)
        yield Store(postgres, password, server, url, folder)
    finally:
        server.stop()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(server.log, ARTIFACTS / "mlflow-server.log")


@pytest.fixture(scope="module")
def studies(store) -> dict[str, subprocess.CompletedProcess]:
    """Two smoke studies started together against the server, each in its own folder with its own private Ray."""
    running = {}
    for name in ("study-a", "study-b"):
        workdir = store.folder / name
        workdir.mkdir()
        ray_tmp = Path(tempfile.mkdtemp(prefix="lkt-", dir="/tmp"))  # short: Ray's socket paths must fit 107 chars
        env = store.env(MLFLOW_TRACKING_URI=store.url, RAY_TMPDIR=str(ray_tmp))
        log = (workdir / "tune.log").open("w")
        process = subprocess.Popen([LEUKOTUNE, "tune", "--config", str(SMOKE), "--address", "local", *STUDY],
                                   cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        running[name] = (process, workdir, ray_tmp)
    done = {}
    try:
        for name, (process, workdir, _) in running.items():
            process.wait(timeout=1200)
            output = (workdir / "tune.log").read_text(errors="replace")
            store.outputs[name] = output
            done[name] = subprocess.CompletedProcess(process.args, process.returncode, output, "")
    finally:
        for name, (process, workdir, ray_tmp) in running.items():
            if process.poll() is None:  # a study that overran: end it and whatever it started
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(workdir / "tune.log", ARTIFACTS / f"{name}.log")
            shutil.rmtree(ray_tmp, ignore_errors=True)
    return done


def _study_runs(store: Store) -> tuple[list, dict[str, list]]:
    """(parent runs, trial runs by study id) of the experiment, read through the server."""
    client = MlflowClient(tracking_uri=store.url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("leukotune.kind") == "study"]
    trials: dict[str, list] = {}
    for run in runs:
        if run.data.tags.get("leukotune.kind") == "trial":
            trials.setdefault(run.data.tags.get("leukotune.study_id"), []).append(run)
    return parents, trials


# ---------------------------------------------------------------- two studies at once

def test_two_studies_at_the_same_time_both_complete(studies):
    for name, done in studies.items():
        assert done.returncode == 0, f"{name}:\n{done.stdout[-4000:]}"
        assert "leaderboard" in done.stdout, done.stdout[-2000:]
        # On a database server no MLflow call of either study needed a retry (the experiment both create included).
        assert not re.search(r"^MLflow .* failed \(", done.stdout, re.M), done.stdout[-4000:]


def test_the_two_studies_have_their_own_study_ids(store, studies):
    # Everything of a study in MLflow (its parent run, its trial runs, what it closes at its end) is found by this id.
    ids = {name: re.search(r"^study (\S+): ", done.stdout, re.M).group(1) for name, done in studies.items()}
    assert len(set(ids.values())) == 2, f"two studies share a study id: {ids}"


def test_every_trial_of_both_studies_is_a_finished_run_none_lost(store, studies):
    parents, trials = _study_runs(store)
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    assert len({p.data.tags["leukotune.study_id"] for p in parents}) == 2
    for parent in parents:
        own = trials.get(parent.data.tags["leukotune.study_id"], [])
        assert len(own) == TRIALS, [r.info.run_name for r in own]
        assert all(r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parent.info.run_id
                   for r in own)
    # The studies overlapped: each began before the other ended.
    (first, second) = sorted(parents, key=lambda r: r.info.start_time)
    assert second.info.start_time < first.info.end_time
    # What the server wrote is in PostgreSQL itself: every run, none left RUNNING.
    assert store.postgres.count(DATABASE, "runs") == 2 + 2 * TRIALS
    assert store.postgres.count(DATABASE, "runs", "status = 'RUNNING'") == 0


def test_promote_then_predict_through_the_server(store, studies):
    sample = require_cnmc_sample()
    promoted = store.leukotune("promote", "promote", "--experiment", EXPERIMENT)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert promoted.stdout.strip().splitlines()[-1] == MODEL_URI
    predicted = store.leukotune("predict", "predict", "--model", MODEL_URI, str(sample), "--json")
    assert predicted.returncode == 0, predicted.stderr
    result = json.loads(predicted.stdout)
    assert result["classified"] == 60 and result["errors"] == 0
    assert store.postgres.count(DATABASE, "model_versions") == 1


# ---------------------------------------------------------------- replicas

def test_two_servers_starting_together_on_a_new_database_both_come_up(store, tmp_path):
    # MLflow creates its tables as a server starts; two replicas on a new database would race without the lock.
    store.postgres.add_database(USER, "mlflow_replicas")
    uri = store.postgres.uri(USER, store.password, "mlflow_replicas")
    servers = []
    try:
        for index in range(2):
            port = free_port()
            command = [LEUKOTUNE, "mlflow-server", "--port", str(port), "--workers", "1", "--backend-store-uri", uri,
                       "--artifacts-destination", str(tmp_path / "artifacts")]
            servers.append((f"http://127.0.0.1:{port}", start(f"replica-{index}", command, user_env(tmp_path),
                                                               tmp_path, cwd=tmp_path)))
        for url, server in servers:
            wait_http(f"{url}/health", timeout_s=180, process=server)
        # One store behind both: what one replica wrote, the other reads.
        experiment_id = MlflowClient(servers[0][0]).create_experiment("replicas")
        assert MlflowClient(servers[1][0]).get_experiment(experiment_id).name == "replicas"
    finally:
        for _, server in servers:
            server.stop()
            store.outputs[server.name] = server.log.read_text(errors="replace")


def test_mlflow_server_refuses_an_out_of_date_schema_in_one_line(store, tmp_path):
    from leukotune.tuner.tracking.postgres import create_mlflow_schema

    store.postgres.add_database(USER, "mlflow_old")
    uri = store.postgres.uri(USER, store.password, "mlflow_old")
    create_mlflow_schema(uri, "mlflow-artifacts:/")
    with store.postgres.superuser("mlflow_old") as connection:  # as a database of MLflow 1.x would read
        connection.execute("UPDATE alembic_version SET version_num = '0a8213491aaa'")
    done = store.leukotune("mlflow-server-old-schema", "mlflow-server", "--port", str(free_port()),
                           "--backend-store-uri", uri, "--artifacts-destination", str(tmp_path / "artifacts"),
                           cwd=tmp_path, env=store.env(), timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    assert "out-of-date database schema" in lines[0] and "mlflow db upgrade" in lines[0]
    assert lines[0].startswith(f"error: backend store postgresql://{USER}:***@") and store.password not in lines[0]


# ---------------------------------------------------------------- URIs that cannot work

def _bad_uri(store: Store, case: str) -> tuple[str, str, str]:
    """(URI, its password, what the one line must say) for a store that cannot work."""
    postgres, password, wrong = store.postgres, store.password, f"wrong-{secrets.token_hex(8)}"
    return {"no-server": (postgres.uri(USER, password, DATABASE, port=free_port()), password, "does not answer"),
            "wrong-password": (postgres.uri(USER, wrong, DATABASE), wrong,
                               f'password authentication failed for user "{USER}"'),
            "no-database": (postgres.uri(USER, password, "no_such_db"), password,
                            'database "no_such_db" does not exist')}[case]


@pytest.mark.parametrize("case", ["no-server", "wrong-password", "no-database"])
def test_mlflow_server_refuses_a_store_it_cannot_use(store, case, tmp_path):
    uri, password, reason = _bad_uri(store, case)
    port = free_port()
    started = time.monotonic()
    done = store.leukotune(f"mlflow-server-{case}", "mlflow-server", "--port", str(port), "--backend-store-uri", uri,
                           "--artifacts-destination", str(tmp_path / "artifacts"), cwd=tmp_path, env=store.env(),
                           timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and done.stdout == "", done.stdout + done.stderr
    assert lines[0].startswith(f"error: backend store postgresql://{USER}:***@127.0.0.1:") and reason in lines[0]
    assert password not in done.stderr
    assert time.monotonic() - started < 60 and not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize("case", ["no-server", "wrong-password"])
def test_tune_refuses_a_postgres_tracking_uri_it_cannot_use_before_ray_starts(store, case, tmp_path):
    uri, password, reason = _bad_uri(store, case)
    runs_before = store.postgres.count(DATABASE, "runs")
    ray_tmp = tmp_path / "ray-tmp"
    started = time.monotonic()
    done = store.leukotune(f"tune-{case}", "tune", "--config", str(SMOKE), "--address", "local", *STUDY,
                           cwd=tmp_path, env=store.env(MLFLOW_TRACKING_URI=uri, RAY_TMPDIR=str(ray_tmp)), timeout=180)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stdout, done.stdout + done.stderr
    assert lines[0].startswith(f"error: MLflow tracking store postgresql://{USER}:***@127.0.0.1:")
    assert reason in lines[0]
    assert password not in done.stdout + done.stderr
    assert time.monotonic() - started < 90  # seconds of imports and one connection, no Ray
    assert not ray_tmp.exists()  # Ray never started
    assert store.postgres.count(DATABASE, "runs") == runs_before  # no MLflow run


# ---------------------------------------------------------------- last: every output above

def test_the_password_appears_in_no_output_log_or_command_line(store, studies):
    assert len(store.outputs) >= 2  # both studies, and every other command this module ran before
    leaked = [name for name, text in store.outputs.items() if store.password in text]
    server_log = store.server.log.read_text(errors="replace")
    leaked += [str(log) for log, text in ((store.server.log, server_log),
                                          (store.postgres.log, store.postgres.log.read_text(errors="replace")))
               if store.password in text]
    # Every process of the running server (mlflow, uvicorn and its workers, the job runner), as `ps` shows them.
    command_lines = _group_command_lines(store.server.process.pid)
    assert any("uvicorn" in line for line in command_lines), command_lines  # the server's workers were seen
    leaked += [line for line in command_lines if store.password in line]
    assert not leaked, leaked
    assert f"backend store: postgresql://{USER}:***@127.0.0.1:" in server_log  # what the server printed, redacted


def _group_command_lines(group: int) -> list[str]:
    lines = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getpgid(process.info["pid"]) == group:
                lines.append(" ".join(process.info["cmdline"] or []))
        except (ProcessLookupError, psutil.Error):
            continue
    return lines
