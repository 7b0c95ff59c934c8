"""After one short smoke study (real Ray, Optuna, MLflow on SQLite), MLflow holds what its UI shows a user: the
training view's experiment tag, dataset lineage on every run, the leaderboard table and the winner on the study run.
Slow, still run by CI."""
from __future__ import annotations

import json

import mlflow
import pytest

from conftest import SHARED_EXPERIMENT, SHARED_TRIALS, study_runs

from leukotune.tuner.registry.model_uris import process_tracking_uri

pytestmark = pytest.mark.slow

EXPERIMENT = SHARED_EXPERIMENT
METRIC = "best_val_f1_weighted"


@pytest.fixture(scope="module")
def finished_study(shared_study) -> tuple[str, str]:
    """The session's shared smoke study (a study costs most of this module's time)."""
    return shared_study.stdout, shared_study.uri


def test_the_experiment_opens_in_the_training_view(finished_study):
    stdout, uri = finished_study
    client, _, _ = study_runs(uri, EXPERIMENT)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # MLflow 3.17's UI picks its view from the link itself: the one the study prints opens the training view.
    assert f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning" in stdout, stdout[-2000:]


def test_the_study_and_every_trial_name_their_data_by_its_fingerprint(finished_study):
    _, uri = finished_study
    client, parents, trials = study_runs(uri, EXPERIMENT)
    assert len(parents) == 1 and len(trials) == SHARED_TRIALS
    fingerprint = parents[0].data.tags["leukotune.data_fingerprint"]
    summary = mlflow.artifacts.load_dict(f"{parents[0].info.artifact_uri}/data/summary.json")
    sides = sorted(side for side in summary["split"] if side != "total")  # train, val (and test where split off)
    assert {"train", "val"} <= set(sides)
    for run in parents + trials:
        inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
        contexts = sorted({t.key: t.value for t in i.tags}["mlflow.data.context"] for i in inputs)
        assert contexts == sides, run.info.run_name
        assert {i.dataset.digest for i in inputs} == {fingerprint}
        assert {i.dataset.name for i in inputs} == {f"synthetic-cnmc-{side}" for side in sides}
        source = json.loads(inputs[0].dataset.source)
        assert source["tags"]["source"].startswith("synthetic:cells_per_subject=12,seed=0,subjects=8")


def test_the_study_run_holds_the_leaderboard_table_and_the_winner(finished_study):
    _, uri = finished_study
    client, parents, trials = study_runs(uri, EXPERIMENT)
    parent = parents[0]
    with process_tracking_uri(uri):  # and back to unset after, environment included
        mlflow.set_experiment(EXPERIMENT)
        table = mlflow.load_table("leaderboard_table.json", run_ids=[parent.info.run_id])
    trial_ids = {run.data.tags["leukotune.trial_id"] for run in trials}
    assert set(table["trial"]) == trial_ids and table["rank"].tolist() == list(range(1, SHARED_TRIALS + 1))
    assert {"status", "epochs", METRIC, "conv_layers", "kernel_size", "optimizer", "lr"} <= set(table.columns)
    assert table[METRIC].is_monotonic_decreasing  # best first (the smoke study maximises)

    winner = table.iloc[0]
    assert parent.data.tags["leukotune.best_trial_id"] == winner["trial"]
    assert parent.data.metrics[METRIC] == pytest.approx(winner[METRIC])
    winner_run = next(run for run in trials if run.data.tags["leukotune.trial_id"] == winner["trial"])
    for key in ("conv_layers", "kernel_size", "optimizer", "lr"):
        assert parent.data.params[key] == winner_run.data.params[key]
