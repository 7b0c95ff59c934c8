"""Shared fixtures and helpers: the real C-NMC sample, small synthetic datasets, running `leukotune` as a user would
and reading back what a study left in MLflow.

Test modules import the plain helpers with `from conftest import ...` (pytest puts this folder on sys.path).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE = REPO_ROOT / "studies" / "smoke.yaml"
CNMC_SAMPLE = REPO_ROOT.parent / "shared" / "cnmc-sample"
# The smoke study shrunk to seconds per trial: a few synthetic subjects, small batches.
TINY = ["data.synthetic.subjects=8", "data.synthetic.cells_per_subject=12", "train.batch_size=16"]


def pytest_configure(config: pytest.Config) -> None:
    """Tests press Ctrl-C (SIGINT) on the commands they start. A suite started in the background of a non-interactive
    shell (`make test &` in a script) inherits SIGINT ignored, and so would every command it starts, which then
    never sees the key: give the suite, and through it its children, the default a terminal's foreground job has."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_cnmc_sample() -> Path:
    """The 60 real C-NMC cells shipped beside the checkout in ../shared: a failure under CI (which has them), a
    skip naming the missing folder elsewhere."""
    if not (CNMC_SAMPLE / "training_data").is_dir():
        reason = f"real C-NMC sample not found at {CNMC_SAMPLE} (../shared is absent on this machine)"
        if in_ci():
            pytest.fail(f"{reason}; CI must have it")
        pytest.skip(reason)
    return CNMC_SAMPLE


@pytest.fixture(scope="session")
def cnmc_sample() -> Path:
    return require_cnmc_sample()


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic C-NMC tree (6 subjects x 4 cells, real 450x450 BMPs), written once per test session."""
    from leukotune.data import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic_cnmc")
    write_synthetic_dataset(root, subjects=6, cells_per_subject=4, seed=0)
    return root


# ------------------------------------------------------------------ running the command

@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of a fresh user: own cache, local Ray and MLflow (nothing inherited from the machine)."""
    values = {**os.environ, "LEUKOTUNE_CACHE_DIR": str(tmp_path / "cache"), "LEUKOTUNE_MIN_FREE_GB": "0.1"}
    for inherited in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ADDRESS"):
        values.pop(inherited, None)
    return values


def sets(values: list[str]) -> list[str]:
    """`["a=1", "b=2"]` -> `["--set", "a=1", "--set", "b=2"]`."""
    return [arg for value in values for arg in ("--set", value)]


def run_leukotune(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600
                  ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leukotune.tuner.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------ what a study left behind

def local_uri(workdir: Path) -> str:
    """The embedded default tracking store of a study run in `workdir`."""
    return f"sqlite:///{workdir / '.leukotune' / 'mlflow.db'}"


def study_runs(uri: str, experiment: str) -> tuple[MlflowClient, list, list]:
    """(client, parent runs, trial runs) of an experiment; empty lists when it does not exist yet."""
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=1000) if found else []
    return (client, [r for r in runs if r.data.tags.get("leukotune.kind") == "study"],
            [r for r in runs if r.data.tags.get("leukotune.kind") == "trial"])


def reported_trial_pids(workdir: Path) -> set[int]:
    """PIDs that this study's trials reported to Tune (Tune adds `pid` to every result), read from its folder."""
    pids = set()
    for result_file in (workdir / ".leukotune" / "runs").glob("*/*/result.json"):
        for line in result_file.read_text().splitlines():
            if line.strip():
                pids.add(int(json.loads(line)["pid"]))
    return pids


# ------------------------------------------------------------------ one study several slow tests read

SHARED_EXPERIMENT = "smoke-shared"
SHARED_TRIALS = 3


@dataclass(frozen=True)
class FinishedStudy:
    workdir: Path
    stdout: str
    stderr: str
    uri: str


@pytest.fixture(scope="session")
def shared_study(tmp_path_factory: pytest.TempPathFactory) -> FinishedStudy:
    """One short smoke study (3 trials, 2 epochs, FIFO) run once per session: the tests of what a study prints
    and records read it instead of each paying a study of their own."""
    workdir = tmp_path_factory.mktemp("shared-study")
    env = {**os.environ, "LEUKOTUNE_CACHE_DIR": str(workdir / "cache"), "LEUKOTUNE_MIN_FREE_GB": "0.1"}
    for inherited in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ADDRESS"):
        env.pop(inherited, None)
    result = run_leukotune(["tune", "--config", str(SMOKE), *sets(TINY + [
        f"tune.num_samples={SHARED_TRIALS}", "train.epochs=2", "tune.scheduler=fifo",
        f"tracking.experiment={SHARED_EXPERIMENT}"])], workdir, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return FinishedStudy(workdir, result.stdout, result.stderr, local_uri(workdir))


# ------------------------------------------------------------------ a real PostgreSQL (Debian's postgresql 15)

POSTGRES_INITDB = Path("/usr/lib/postgresql/15/bin/initdb")


def require_postgres() -> Path:
    """PostgreSQL 15's server programs (and, for root, the `postgres` user to run them as): a failure under CI
    (.ci/run installs them), a skip saying so elsewhere."""
    import pwd

    try:
        has_user = os.geteuid() != 0 or bool(pwd.getpwnam("postgres"))
    except KeyError:
        has_user = False
    if not (POSTGRES_INITDB.exists() and has_user):
        reason = (f"PostgreSQL 15 not found ({POSTGRES_INITDB}, run as the `postgres` user under root; Debian: "
                  f"apt-get install -y postgresql)")
        if in_ci():
            pytest.fail(f"{reason}; CI must have it")
        pytest.skip(reason)
    return POSTGRES_INITDB.parent


# ------------------------------------------------------------------ no test leaves MLflow pointed elsewhere

_MLFLOW_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True)
def mlflow_process_uris_unchanged(request: pytest.FixtureRequest):
    """A test that leaves MLflow's process-wide tracking or registry URI set (its setters also export them to
    os.environ) sends every later in-process client that names only a tracking URI to another registry: CI saw
    `promote` succeed and the next test's client not find the model. Fail the test that leaks it, and put it back."""
    from leukotune.tuner import compat

    before, env_before = compat.mlflow_process_uris(), {key: os.environ.get(key) for key in _MLFLOW_URI_ENV}
    yield
    after, env_after = compat.mlflow_process_uris(), {key: os.environ.get(key) for key in _MLFLOW_URI_ENV}
    compat.restore_mlflow_process_uris(before)
    for key, value in env_before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if (after, env_after) != (before, env_before):
        pytest.fail(f"{request.node.nodeid} left MLflow's process-wide URIs changed: {before} -> {after}, "
                    f"environment {env_before} -> {env_after}")
