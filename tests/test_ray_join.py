"""Joining Ray: which cluster a command uses, never waiting on one that is gone, and a Ray Job's records.

The slow tests start a real head with `ray start`, kill its processes by PID and keep its record, exactly what a
crashed `ray start` leaves behind. Everything runs under its own RAY_TMPDIR, so no other Ray on the machine (nor
its record in /tmp/ray) is read or touched.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from leukotune.tuner.cluster import job_driver
from leukotune.tuner.cluster.ray_cluster import PRIVATE, ClusterError, choose_cluster, probe, recorded_address

from conftest import SMOKE, TINY, free_port, run_leukotune, sets

TINY_STUDY = [*TINY, "tune.num_samples=1", "tune.max_concurrent=1", "train.epochs=1"]
# A hang guard, not a speed target: the command must end on its own well before this.
HANG_GUARD_S = 600


@pytest.fixture
def ray_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private RAY_TMPDIR (short: Ray's socket paths must fit 107 bytes) where Ray looks for `ray start`'s record."""
    folder = Path(tempfile.mkdtemp(prefix="lt", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(folder))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def write_record(ray_tmpdir: Path, address: str) -> Path:
    record = ray_tmpdir / "ray" / "ray_current_cluster"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(address)
    return record


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port that accepts connections and never says a word (what a stale record may point at)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True).start()
    yield server.getsockname()[1]
    for conn in accepted:
        conn.close()
    server.close()


# ------------------------------------------------------------------ choosing (fast: no Ray is started)

def test_no_record_means_a_private_ray(ray_tmpdir: Path) -> None:
    assert recorded_address() == (None, ray_tmpdir / "ray" / "ray_current_cluster")
    choice = choose_cluster(None, log=lambda line: pytest.fail(f"unexpected warning: {line}"))
    assert (choice.source, choice.address) == (PRIVATE, None)
    assert "private local Ray" in choice.describe()


def test_dead_record_is_reported_in_one_line_and_not_joined(ray_tmpdir: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    record = write_record(ray_tmpdir, dead)
    lines: list[str] = []
    choice = choose_cluster(None, log=lines.append)
    assert choice.source == PRIVATE
    assert len(lines) == 1 and "\n" not in lines[0]
    assert dead in lines[0] and str(record) in lines[0] and "does not answer" in lines[0] and "ray stop" in lines[0]


def test_a_port_that_accepts_but_is_no_gcs_does_not_count(silent_listener: int) -> None:
    reason = probe(f"127.0.0.1:{silent_listener}", timeout_s=1.0)
    assert reason is not None and "Ray GCS" in reason


@pytest.mark.parametrize(("address", "message"), [
    ("127.0.0.1:1", "no Ray cluster answers at 127.0.0.1:1 (--address): Connection refused"),
    ("ray://127.0.0.1:1", "no Ray cluster answers at ray://127.0.0.1:1 (--address): Connection refused"),
    ("http://127.0.0.1:8265", "is a dashboard address"),
    ("auto", "no `ray start` cluster is recorded"),
    ("not-an-address", "is not HOST:PORT"),
])
def test_a_named_cluster_that_cannot_be_joined_is_an_error(ray_tmpdir: Path, address: str, message: str) -> None:
    with pytest.raises(ClusterError, match=re.escape(message)):
        choose_cluster(address)


def test_ray_address_from_the_environment_is_named_in_the_error(ray_tmpdir: Path, monkeypatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(ClusterError, match=r"\(RAY_ADDRESS\)"):
        choose_cluster(None)
    # An explicit flag beats the environment.
    assert choose_cluster("local").source == PRIVATE


# ------------------------------------------------------------------ a Ray Job's records (fast)

def job_env(working_dir: bool = True) -> dict[str, str]:
    runtime_env = {"working_dir": "gcs://_ray_pkg_0123.zip"} if working_dir else {}
    config = {"runtime_env": runtime_env, "metadata": {"job_submission_id": "raysubmit_1"}}
    return {job_driver.JOB_CONFIG_ENV: json.dumps(config)}


def test_job_working_dir_is_detected_only_for_a_job_with_an_uploaded_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert job_driver.job_working_dir(job_env()) == tmp_path.resolve()
    assert job_driver.job_working_dir(job_env(working_dir=False)) is None
    assert job_driver.job_working_dir({}) is None
    assert job_driver.job_working_dir({job_driver.JOB_CONFIG_ENV: "not json"}) is None


def test_default_records_inside_a_job_working_dir_are_warned_about(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / '.leukotune' / 'mlflow.db'}"
    storage = tmp_path / ".leukotune" / "runs"
    warning = job_driver.scratch_warning(uri, storage, workdir=tmp_path)
    assert warning is not None and "\n" not in warning
    assert "MLflow store" in warning and f"storage_path {storage}" in warning
    assert "MLFLOW_TRACKING_URI=http://" in warning and "storage_path=" in warning
    note = job_driver.records_note(uri, storage, workdir=tmp_path)
    assert str(storage) in note and "copy them out" in note


def test_records_outside_the_job_working_dir_are_not_warned_about(tmp_path: Path) -> None:
    workdir, shared = tmp_path / "job", tmp_path / "shared"
    assert job_driver.scratch_warning("http://127.0.0.1:5000", shared / "runs", workdir=workdir) is None
    # Only storage_path inside: the warning names it and not the MLflow server.
    warning = job_driver.scratch_warning("http://127.0.0.1:5000", workdir / "runs", workdir=workdir)
    assert "storage_path" in warning and "MLflow store" not in warning
    note = job_driver.records_note("http://127.0.0.1:5000", shared / "runs", workdir=workdir)
    assert "http://127.0.0.1:5000" in note and "copy them out" not in note


# ------------------------------------------------------------------ the commands, as a user runs them

@pytest.fixture
def user_env(env: dict[str, str], ray_tmpdir: Path) -> dict[str, str]:
    return {**env, "RAY_TMPDIR": str(ray_tmpdir)}


@pytest.mark.parametrize("command", ["tune", "train"])
def test_unanswered_address_exits_2_in_one_line_before_any_run(command: str, tmp_path: Path,
                                                              user_env: dict[str, str]) -> None:
    done = run_leukotune([command, "--config", str(SMOKE), *sets(TINY_STUDY), "--address", "127.0.0.1:1"],
                         cwd=tmp_path, env=user_env, timeout=HANG_GUARD_S)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no Ray cluster answers at 127.0.0.1:1" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    # Ray was never asked to connect, and no MLflow run was opened.
    assert "Failed to connect to GCS" not in done.stderr
    assert not (tmp_path / ".leukotune" / "mlflow.db").exists()


def test_submit_to_a_bare_address_nobody_answers_exits_2(tmp_path: Path, user_env: dict[str, str]) -> None:
    done = run_leukotune(["submit", "--config", str(SMOKE), "--address", "127.0.0.1:1"], cwd=SMOKE.parents[1],
                         env=user_env, timeout=HANG_GUARD_S)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no Ray cluster answers at 127.0.0.1:1" in done.stderr and "Traceback" not in done.stderr


def start_head(ray_tmpdir: Path) -> tuple[subprocess.Popen, str]:
    """`ray start --head --block` on free ports; returns the process and the GCS address it recorded."""
    ports = {flag: free_port() for flag in ("--port", "--node-manager-port", "--object-manager-port",
                                            "--ray-client-server-port", "--dashboard-agent-listen-port",
                                            "--dashboard-agent-grpc-port", "--metrics-export-port",
                                            "--runtime-env-agent-port")}
    ray = Path(sys.executable).with_name("ray")
    args = [str(ray), "start", "--head", "--block", "--num-cpus=1", "--include-dashboard=false",
            f"--temp-dir={ray_tmpdir / 'ray'}", *(f"{flag}={port}" for flag, port in ports.items())]
    head = subprocess.Popen(args, env={**os.environ, "RAY_TMPDIR": str(ray_tmpdir)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and head.poll() is None:
        address, _ = recorded_address()
        if address and probe(address, timeout_s=1.0) is None:
            return head, address
        time.sleep(1)
    kill_tree(head)
    pytest.fail(f"`ray start --head` did not come up (exit code {head.poll()})")


def descendants(root: int) -> list[int]:
    """PIDs of every process under `root`, read from /proc (collected before any is killed, so none is reparented)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name in parentheses may hold spaces; the parent PID is the second field after it.
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def kill_tree(head: subprocess.Popen) -> None:
    """SIGKILL the `ray start` we launched and every process under it, by PID: a crash, so no `ray stop` runs."""
    pids = [head.pid, *descendants(head.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    head.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.e2e
def test_a_dead_ray_start_cluster_is_not_waited_on(tmp_path: Path, ray_tmpdir: Path, user_env: dict[str, str]
                                                   ) -> None:
    head, address = start_head(ray_tmpdir)
    kill_tree(head)
    record = ray_tmpdir / "ray" / "ray_current_cluster"
    assert record.read_text().strip() == address, "the record must survive the crash"
    assert probe(address, timeout_s=1.0) is not None, "the head must be dead"

    done = run_leukotune(["tune", "--config", str(SMOKE), *sets(TINY_STUDY)], cwd=tmp_path, env=user_env,
                         timeout=HANG_GUARD_S)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    warnings = [line for line in output.splitlines() if "does not answer" in line]
    assert len(warnings) == 1 and address in warnings[0] and "ray stop" in warnings[0], output
    assert "Ray: starting a private local Ray" in done.stdout
    assert "leaderboard" in done.stdout
    assert "Failed to connect to GCS" not in output

    done = run_leukotune(["train", "--config", str(SMOKE), *sets(TINY_STUDY)], cwd=tmp_path, env=user_env,
                         timeout=HANG_GUARD_S)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert sum("does not answer" in line for line in output.splitlines()) == 1, output
    assert "Ray: starting a private local Ray" in done.stdout and "final metrics" in done.stdout
    assert record.read_text().strip() == address, "leukotune must not touch Ray's record"
