"""The tuning study end to end: real Ray, real Optuna, real MLflow on SQLite. Slow, still run by CI."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from conftest import SHARED_EXPERIMENT, SMOKE, TINY, local_uri, sets, study_runs
from conftest import run_leukotune as run_cli
from studyproc import StudyProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def study_env(tmp_path: Path, env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    return tmp_path, env


def runs_of(workdir: Path, experiment: str) -> tuple[MlflowClient, list, list]:
    return study_runs(local_uri(workdir), experiment)


def test_study_logs_one_parent_with_finished_children(shared_study):
    assert "leaderboard" in shared_study.stdout and "mlflow ui" in shared_study.stdout
    client, parents, children = study_runs(shared_study.uri, SHARED_EXPERIMENT)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 3
    parent_id = parents[0].info.run_id
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent_id
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_f1_weighted")]
        assert steps == [1, 2]  # one value per epoch, step = epoch
        # 3 trials, tracking.log_models 3 by default: every trial is in the top 3 and has a LoggedModel
        model_uri = child.data.tags["leukotune.model_uri"]
        assert model_uri.startswith("models:/m-")
        assert client.get_logged_model(model_uri.removeprefix("models:/")).source_run_id == child.info.run_id
        plots = {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
        assert {"plots/confusion_matrix.png", "plots/learning_curves.png"} <= plots
    parent_artifacts = {a.path for a in client.list_artifacts(parent_id, "optuna")}
    assert "optuna/optimization_history.png" in parent_artifacts
    assert parents[0].data.tags.get("leukotune.data_fingerprint")


def test_asha_stops_weak_trials_early(study_env):
    workdir, env = study_env
    # A known-good and a hopeless learning rate first, so the outcome is not left to chance.
    points = ("[{conv_layers: 3, kernel_size: 3, optimizer: adam, lr: 0.002},"
              " {conv_layers: 3, kernel_size: 3, optimizer: rmsprop, lr: 0.0000001}]")
    result = run_cli(["tune", "--config", str(SMOKE), *sets([
        "tune.num_samples=3", "tune.max_concurrent=1", "train.epochs=4", "tune.grace_period=1",
        "tune.reduction_factor=2", "tune.space.lr={loguniform: [0.0000001, 0.01]}", "data.test_fraction=0",
        f"tune.points_to_evaluate={points}", "tracking.experiment=e2e-asha", "tracking.log_models=false"])],
        workdir, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client, _, children = runs_of(workdir, "e2e-asha")
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    by_lr = {float(c.data.params["lr"]): c for c in children}
    hopeless, good = by_lr[1e-7], by_lr[0.002]
    assert len(client.get_metric_history(good.info.run_id, "val_loss")) == 4
    assert len(client.get_metric_history(hopeless.info.run_id, "val_loss")) < 4
    assert hopeless.data.tags["leukotune.stopped_early"] == "true"
    assert good.data.tags["leukotune.stopped_early"] == "false"


def test_killed_study_resumes_to_exactly_n_trials(study_env):
    workdir, env = study_env
    args = ["tune", "--config", str(SMOKE), *sets(TINY + [
        "tune.num_samples=4", "tune.max_concurrent=2", "train.epochs=3", "tune.scheduler=fifo",
        "tracking.experiment=e2e-resume", "tracking.log_models=false"])]
    driver = StudyProcess(args, workdir, env)
    # Kill once a trial has reported its last epoch, while the next ones are under way.
    assert driver.wait_for(r"trial \w+ epoch 3/3"), driver.finish()[-3000:]
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started, mid-study
    driver.finish(timeout=30)
    _, parents, before = runs_of(workdir, "e2e-resume")
    # Killed mid-study: nobody closed the parent, and not every trial had finished.
    assert parents[0].info.status == "RUNNING"
    assert sum(c.info.status == "FINISHED" for c in before) < 4

    result = run_cli(args + ["--resume"], workdir, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client, parents, children = runs_of(workdir, "e2e-resume")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4, [c.data.tags.get("leukotune.trial_id") for c in children]
    assert len({c.data.tags["leukotune.trial_id"] for c in children}) == 4
    assert all(c.info.status == "FINISHED" for c in children)
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")]
        assert steps == [1, 2, 3]  # no gap, no duplicate epoch across the restart
    # A trial started after Tune's last state snapshot is unknown to the resumed study: its run is retired
    # (KILLED, tagged, soft-deleted so it can be restored), never left RUNNING.
    everything = client.search_runs([parents[0].info.experiment_id], run_view_type=ViewType.ALL)
    for run in everything:
        if run.info.lifecycle_stage == "deleted":
            assert run.info.status == "KILLED" and run.data.tags["leukotune.orphaned"] == "true"

