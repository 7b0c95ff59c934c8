"""`leukotune submit` / `jobs`: pure helpers (fast) and a real token-authenticated Ray head (slow)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from e2e.servers import free_port, ray_env, start_ray_head, write_token

from leukotune.tuner.cluster import jobs, shipped_code
from leukotune.tuner.tracking.client import code_version

from conftest import REPO_ROOT

LEUKOTUNE = str(Path(sys.executable).parent / "leukotune")


# ---------------------------------------------------------------- fast

@pytest.mark.parametrize("given, env, expected", [
    ("http://head:8265/", None, "http://head:8265"),
    ("head:8265", None, "http://head:8265"),
    (None, "http://from-env:8265", "http://from-env:8265"),
    (None, None, jobs.DEFAULT_ADDRESS),
    ("10.0.0.5:6379", None, "10.0.0.5:6379"),  # a GCS address is left for Ray to resolve
])
def test_resolve_address(monkeypatch, given, env, expected):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)
    assert jobs.resolve_address(given) == expected


def test_entrypoint_passes_overrides_and_data_with_a_relative_config(tmp_path):
    (tmp_path / "studies").mkdir()
    config = tmp_path / "studies" / "smoke.yaml"
    config.write_text("name: smoke\n")
    entry = jobs.study_entrypoint(config, tmp_path, ["tune.num_samples=2", "train.lr=1e-3"], "/data/my cells")
    assert entry == ("python -m leukotune.tuner.cli tune --config studies/smoke.yaml --set tune.num_samples=2 "
                     "--set train.lr=1e-3 --data '/data/my cells'")


def test_entrypoint_refuses_a_config_outside_the_uploaded_folder(tmp_path):
    with pytest.raises(jobs.ClusterError, match="outside the project folder"):
        jobs.study_entrypoint(tmp_path / "elsewhere.yaml", tmp_path / "project", [], None)


def test_forwarded_env_takes_mlflow_settings_only(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "never-forwarded")
    assert jobs.forwarded_env(None) == {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    assert jobs.forwarded_env("http://127.0.0.1:5000")["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"


def test_excludes_keep_environments_and_stores_out_of_the_upload():
    for name in (".venv", ".git", ".leukotune", "mlruns", "__pycache__", ".pytest_cache"):
        assert name in jobs.WORKING_DIR_EXCLUDES


@pytest.mark.parametrize("status, code", [("SUCCEEDED", 0), ("FAILED", 1), ("STOPPED", 1), ("RUNNING", 1)])
def test_exit_code_for(status, code):
    assert jobs.exit_code_for(status) == code


def test_auth_header_comes_from_the_token_file(monkeypatch, tmp_path):
    token_file = write_token(tmp_path)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    assert jobs.auth_headers() == {"Authorization": f"Bearer {token_file.read_text()}"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert jobs.auth_headers() == {}


def test_unreachable_address_is_one_line_and_exit_2():
    address = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(jobs.ClusterError, match="unreachable"):
        jobs.connect(address)
    done = subprocess.run([LEUKOTUNE, "jobs", "status", "some-job", "--address", address], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.startswith("error: Ray dashboard at") and "unreachable" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


# ---------------------------------------------------------------- the job's own code

def make_checkout(folder: Path, version: str = "1.2.3") -> Path:
    for name in shipped_code.PACKAGES:
        (folder / name / "__pycache__").mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f"WHERE = {name!r}\n")
        (folder / name / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"cache")
    (folder / "pyproject.toml").write_text(f'[project]\nname = "leukotune"\nversion = "{version}"\n')
    return folder


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=folder,
                          capture_output=True, text=True, check=True).stdout.strip()


def test_staged_code_is_the_package_python_imports_before_the_installed_copy(tmp_path):
    code = shipped_code.ship(make_checkout(tmp_path / "tree"), tmp_path / "staging")
    assert code.from_working_dir and code.source == (tmp_path / "tree").resolve()
    assert sorted(p.name for p in code.package.iterdir()) == ["__init__.py", "data", "models", "tuner"]
    assert not list(code.package.rglob("__pycache__"))
    # How Ray runs the job's driver and workers: the py_modules folder's parent first on PYTHONPATH. This venv has
    # leukotune installed in editable mode (setuptools' finder on sys.meta_path), as the cluster's nodes do.
    probe = "import leukotune.tuner, leukotune.models; print(leukotune.tuner.__file__, leukotune.models.WHERE)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(code.package.parent)})
    assert done.stdout.split() == [str(code.package / "tuner" / "__init__.py"), "models"]


def test_the_code_version_names_the_commit_and_any_change(tmp_path):
    tree = make_checkout(tmp_path / "tree")
    assert shipped_code.ship(tree, tmp_path / "s1").version.startswith("1.2.3, not a git checkout (files sha256:")
    git(tree, "init", "-q")
    git(tree, "add", "data", "models", "tuner", "pyproject.toml")
    git(tree, "commit", "-q", "-m", "first")
    sha = git(tree, "rev-parse", "--short", "HEAD")
    assert shipped_code.ship(tree, tmp_path / "s2").version == f"1.2.3+{sha}"
    (tree / "tuner" / "new.py").write_text("X = 1\n")  # untracked, but shipped
    changed = shipped_code.ship(tree, tmp_path / "s3").version
    assert changed.startswith(f"1.2.3+{sha} with uncommitted changes (files sha256:")
    (tree / "tuner" / "new.py").write_text("X = 2\n")
    assert shipped_code.ship(tree, tmp_path / "s4").version != changed  # the digest tells two changes apart


def test_a_working_dir_without_the_code_ships_the_copy_running_here(tmp_path):
    (tmp_path / "studies").mkdir()
    code = shipped_code.ship(tmp_path / "studies", tmp_path / "staging")
    assert not code.from_working_dir and code.source == REPO_ROOT
    assert "the copy running here" in code.describe()
    assert (code.package / "tuner" / "cluster" / "shipped_code.py").read_bytes() == Path(
        shipped_code.__file__).read_bytes()


def test_code_version_prefers_what_submit_shipped(monkeypatch):
    monkeypatch.setenv(shipped_code.VERSION_ENV, "9.9.9+abc1234 with uncommitted changes (files sha256:0123)")
    assert code_version() == "9.9.9+abc1234 with uncommitted changes (files sha256:0123)"


# ---------------------------------------------------------------- a real Ray head (token auth on)

@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-head")
    token_file = write_token(folder)
    cluster = start_ray_head(folder, ray_env(token_file), num_cpus=1)
    try:
        yield cluster, token_file
    finally:
        cluster.stop()


@pytest.fixture
def client(ray_head, monkeypatch):
    cluster, token_file = ray_head
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    return jobs.connect(cluster.dashboard_url)


@pytest.fixture
def working_dir(tmp_path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "marker.txt").write_text("uploaded\n")
    (folder / ".venv").mkdir()
    (folder / ".venv" / "big.bin").write_bytes(b"0" * 1024)
    return folder


@pytest.mark.slow
@pytest.mark.e2e
def test_submit_follow_succeeds_and_streams_logs(client, working_dir):
    entry = ("python -c \"import os; print('hello from', open('marker.txt').read().strip(), "
             "os.path.exists('.venv'), os.environ['MLFLOW_TRACKING_URI'])\"")
    job_id = jobs.submit(client, entry, working_dir, jobs.forwarded_env("http://127.0.0.1:5999"),
                         jobs.submission_id("hello"))
    assert job_id.startswith("leukotune-hello-")
    out = io.StringIO()
    status = jobs.follow(client, job_id, out=out)
    assert status == "SUCCEEDED" and jobs.exit_code_for(status) == 0
    # the working_dir arrived, its .venv did not, and the tracking URI was forwarded
    assert "hello from uploaded False http://127.0.0.1:5999" in out.getvalue()
    assert "hello from uploaded" in jobs.job_logs(client, job_id)
    assert jobs.job_status(client, job_id) == "SUCCEEDED"


@pytest.mark.slow
@pytest.mark.e2e
def test_driver_and_workers_import_the_shipped_code(client, working_dir, tmp_path):
    # The Ray head runs this venv, where leukotune is installed from the checkout (editable): without the shipped
    # package both processes would import REPO_ROOT/tuner.
    (working_dir / "probe.py").write_text(
        "import os, ray, leukotune.tuner\n"
        "print('driver', leukotune.tuner.__file__, os.environ['LEUKOTUNE_CODE_VERSION'])\n"
        "@ray.remote\n"
        "def where():\n"
        "    import leukotune.tuner\n"
        "    return leukotune.tuner.__file__, os.environ['LEUKOTUNE_CODE_VERSION']\n"
        "print('worker', *ray.get(where.remote()))\n")
    code = shipped_code.ship(working_dir, tmp_path / "staging")
    job_id = jobs.submit(client, "python probe.py", working_dir, {}, jobs.submission_id("code"), code=code)
    out = io.StringIO()
    assert jobs.follow(client, job_id, out=out) == "SUCCEEDED", out.getvalue()
    lines = {line.split()[0]: line.split(maxsplit=2)[1:] for line in out.getvalue().splitlines()
             if line.startswith(("driver ", "worker "))}
    for role in ("driver", "worker"):
        path, version = lines[role]
        assert "py_modules_files" in path and not Path(path).is_relative_to(REPO_ROOT), lines
        assert path.endswith("leukotune/tuner/__init__.py") and version == code.version


@pytest.mark.slow
@pytest.mark.e2e
def test_failing_job_ends_failed_with_exit_1(client, working_dir):
    job_id = jobs.submit(client, "python -c \"import sys; print('bad'); sys.exit(3)\"", working_dir, {},
                         jobs.submission_id("fails"))
    status = jobs.follow(client, job_id, out=io.StringIO())
    assert status == "FAILED" and jobs.exit_code_for(status) == 1
    assert any("exit code:  3" in line for line in jobs.describe_job(jobs.job_info(client, job_id)))


@pytest.mark.slow
@pytest.mark.e2e
def test_stop_ends_a_running_job(client, working_dir):
    job_id = jobs.submit(client, "python -c \"import time; print('started', flush=True); time.sleep(300)\"",
                         working_dir, {}, jobs.submission_id("stops"))
    assert jobs.stop_job(client, job_id, wait_s=300) == "STOPPED"


@pytest.mark.slow
@pytest.mark.e2e
def test_unknown_job_is_named(client):
    with pytest.raises(jobs.ClusterError, match="no job 'no-such-job'"):
        jobs.job_info(client, "no-such-job")


@pytest.mark.slow
@pytest.mark.e2e
def test_wrong_or_missing_token_is_one_clear_line(ray_head, monkeypatch, tmp_path):
    cluster, _ = ray_head
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-cluster-token")
    with pytest.raises(jobs.ClusterError, match="rejected the authentication token") as wrong:
        jobs.connect(cluster.dashboard_url)
    assert "not-the-cluster-token" not in str(wrong.value)
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token either
    with pytest.raises(jobs.ClusterError, match="requires token authentication and no token was found"):
        jobs.connect(cluster.dashboard_url)


@pytest.mark.slow
@pytest.mark.e2e
def test_cli_jobs_status_logs_and_wrong_token(ray_head, client, working_dir, tmp_path):
    cluster, token_file = ray_head
    job_id = jobs.submit(client, "echo cli-check", working_dir, {}, jobs.submission_id("cli"))
    jobs.wait_for_terminal(client, job_id, timeout_s=300)
    env = {**cluster.env, "RAY_AUTH_TOKEN_PATH": str(token_file)}
    env.pop("RAY_AUTH_MODE")  # a user's shell: only the token is known
    status = subprocess.run([LEUKOTUNE, "jobs", "status", job_id, "--address", cluster.dashboard_url],
                            capture_output=True, text=True, env=env, timeout=300)
    assert status.returncode == 0 and "status:     SUCCEEDED" in status.stdout
    logs = subprocess.run([LEUKOTUNE, "jobs", "logs", job_id, "--address", cluster.dashboard_url, "--follow"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert logs.returncode == 0 and "cli-check" in logs.stdout
    env["RAY_AUTH_TOKEN"] = "wrong-token"
    wrong = subprocess.run([LEUKOTUNE, "jobs", "status", job_id, "--address", cluster.dashboard_url],
                           capture_output=True, text=True, env=env, timeout=300)
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1
    assert "rejected the authentication token" in wrong.stderr and "wrong-token" not in wrong.stderr
