"""Each error a user can fix is named for what went wrong, prints one line (`error: ...`) and exits 2.

Through the real command (`main`, in this process: the same parser, handler and error mapping as `leukotune`) where
that is cheap; a refusal that needs a running cluster or a model on a server is raised by its own function and
mapped by the same `friendly_errors`.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from leukotune.data import DatasetError
from leukotune.tuner.cli import errors as cli_errors
from leukotune.tuner.cli.errors import EXIT_USAGE, USER_ERRORS, friendly_errors, user_error_classes
from leukotune.tuner.cli.main import main
from leukotune.tuner.cluster.capacity import ClusterShape, NodeType
from leukotune.tuner.cluster.ray_cluster import ClusterError
from leukotune.tuner.cluster.storage import StorageError
from leukotune.tuner.cluster.trial_resources import TrialDoesNotFitError, decide_trial_resources
from leukotune.tuner.config import ConfigError, StudyFileNotFoundError, load_study
from leukotune.tuner.evaluation.logged_models import (
    ModelDownloadError,
    ModelURIError,
    UnusableModelError,
    read_metadata,
)
from leukotune.tuner.registry.promote import ExperimentNotFoundError
from leukotune.tuner.tune.plan import ResumeError
from leukotune.tuner.tune.study import check_runtime

from conftest import SMOKE


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A fresh user's folder: local MLflow and runs under it, no cluster, no weights."""
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ADDRESS", "LEUKOTUNE_WEIGHTS_DIR",
                 "LEUKOTUNE_WEIGHTS_RESNET50", "LEUKOTUNE_WEIGHTS_MOBILENET_V2"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("LEUKOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    return tmp_path


# (command line, the class it raises, the start of its one line)
COMMANDS = [
    (["train", "--config", "missing.yaml"], StudyFileNotFoundError, "study file not found: missing.yaml"),
    (["tune", "--config", str(SMOKE), "--set", "train.epochs=true"], ConfigError, "train.epochs=True is not allowed"),
    (["tune", "--config", str(SMOKE), "--resume"], ResumeError, "--resume: no study named 'smoke' under "),
    (["tune", "--config", str(SMOKE), "--set", "storage_path=s3://bucket/runs"], StorageError,
     "storage_path s3://bucket/runs is a cloud URI"),
    (["tune", "--config", str(SMOKE), "--data", "empty"], DatasetError, "data: "),
    (["predict", "--model", "/models/mine", "cell.bmp"], ModelURIError, "--model '/models/mine': give a model from"),
    (["promote", "--experiment", "nope", "--tracking-uri", "sqlite:///m.db"], ExperimentNotFoundError,
     "no experiment named 'nope' at sqlite:///m.db"),
    (["predict", "--model", "models:/x@nope", "cell.bmp", "--tracking-uri", "sqlite:///m.db"], ModelDownloadError,
     "model models:/x@nope could not be fetched from sqlite:///m.db"),
]


@pytest.mark.parametrize("args, error, start", COMMANDS, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in COMMANDS])
def test_a_command_refuses_in_one_line_and_exit_2(workdir, capsys, monkeypatch, args, error, start):
    raised = []

    def recorded(run):
        try:
            return run()
        except Exception as exc:
            raised.append(type(exc))
            raise

    monkeypatch.setattr(cli_errors, "friendly_errors", lambda run: friendly_errors(lambda: recorded(run)))
    assert main(args) == EXIT_USAGE
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if " INFO mlflow." not in line]  # MLflow creating a new store
    assert raised == [error] and len(lines) == 1 and lines[0].startswith(f"error: {start}"), (raised, err)


def test_missing_weights_for_a_study_name_the_key_and_exit_2(workdir, capsys):
    # The one refusal of more than a line: where it looked and how to get the files, one line each.
    args = ["tune", "--config", str(SMOKE), "--set", "train.model=resnet50", "--set", "train.weights=imagenet"]
    assert main(args) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: train.weights='imagenet' for ") and "leukotune weights fetch" in err
    assert "Traceback" not in err


def test_an_unusable_model_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(UnusableModelError, match="no MLmodel file; is this a model logged by leukotune"):
        read_metadata(tmp_path)
    assert friendly_errors(lambda: read_metadata(tmp_path)) == EXIT_USAGE
    assert capsys.readouterr().err == f"error: {tmp_path.name}: no MLmodel file; is this a model logged by leukotune?\n"


def test_a_trial_no_node_can_hold_is_one_line_and_exit_2(capsys):
    two_cpus = ClusterShape((NodeType("node", 2, 0, 1, is_head=True),), "test", autoscaling=False)
    study = load_study(SMOKE, ["resources.cpus_per_worker=8"])
    with pytest.raises(TrialDoesNotFitError, match="no node type of this cluster can hold it"):
        decide_trial_resources(study, two_cpus)
    assert friendly_errors(lambda: decide_trial_resources(study, two_cpus)) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: resources: one trial needs 8 CPUs") and err.count("\n") == 1


def test_a_ray_train_trial_on_a_cluster_without_its_dashboard_is_one_line_and_exit_2(capsys):
    study = load_study(SMOKE, ["resources.workers=2"])
    with pytest.raises(ClusterError, match="needs Ray's dashboard"):
        check_runtime(study, dashboard_url=None)
    assert friendly_errors(lambda: check_runtime(study, dashboard_url=None)) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: resources.trial_runtime=ray_train needs Ray's dashboard") and err.count("\n") == 1


def test_every_user_error_names_a_class_where_its_concept_lives():
    classes = user_error_classes(loaded_only=False)
    assert len(classes) == len(USER_ERRORS)
    assert all(isinstance(cls, type) and issubclass(cls, Exception) for cls in classes)
    # ConfigError is for a study's values only: none of the others is one.
    assert [cls.__name__ for cls in classes if issubclass(cls, ConfigError)] == ["ConfigError"]


def test_reporting_an_error_loads_nothing_the_command_did_not():
    # `weights fetch` needs torch only; telling its user about a bad name must not load Ray and MLflow first.
    script = ("import sys\nfrom leukotune.tuner.cli.main import main\n"
              "code = main(['weights', 'fetch', 'vgg'])\n"
              "print(code, *[m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ["2"], result.stdout + result.stderr
    assert result.stderr.startswith("error: no ImageNet weights for 'vgg'"), result.stderr
