"""What the MLflow UI shows of a study, against a real MLflow on SQLite: the training view's experiment tag, dataset
inputs with the data fingerprint as digest, the leaderboard as an MLflow table, the winner on the study run."""
from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from leukotune.tuner.preflight import DataSummary
from leukotune.tuner.tracking.client import EXPERIMENT_KIND_TRAINING, TAG_EXPERIMENT_KIND, Tracker
from leukotune.tuner.registry.model_uris import process_tracking_uri
from leukotune.tuner.tracking.datasets import log_dataset_inputs, run_dataset_inputs, study_dataset_inputs
from leukotune.tuner.tracking.parent_run import LEADERBOARD_TABLE, leaderboard_frame, log_leaderboard_table, log_winner

SPLIT = {"total": {"all": 30, "hem": 30}, "train": {"all": 20, "hem": 22}, "val": {"all": 10, "hem": 8}}


def summary(**values) -> DataSummary:
    fields = {"root": "/data/C-NMC_Leukemia", "cells": 60, "all": 30, "hem": 30, "subjects": 8, "split": SPLIT,
              "split_subjects": {}, "skipped": (), "synthetic": False, "fingerprint": "0123456789abcdef",
              "split_method": "subject", "test_source": "none"}
    return DataSummary(**{**fields, **values})


REAL = summary()
SYNTHETIC = summary(root="/cache/synthetic/ab12", synthetic=True, fingerprint="fedcba9876543210")
LEADERBOARD = [
    {"trial_id": "t1", "status": "TERMINATED", "epochs": 2, "best": 0.61, "config": {"lr": 0.001, "conv_layers": 3}},
    {"trial_id": "t2", "status": "TERMINATED", "epochs": 4, "best": 0.83, "config": {"lr": 0.002, "conv_layers": 4}},
    {"trial_id": "t3", "status": "ERROR", "epochs": 0, "best": None, "config": {"lr": 0.01, "conv_layers": 2}},
]


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    """One SQLite store for the module: creating its tables is the slow part."""
    return f"sqlite:///{tmp_path_factory.mktemp('lineage') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def tracker(uri) -> Tracker:
    return Tracker(uri, "lineage", log=lambda _msg: None)


def load_table(tracker: Tracker, run_id: str):
    """`mlflow.load_table` as a user calls it (it searches runs through the fluent API's tracking URI)."""
    with process_tracking_uri(tracker.uri):  # and back to unset after, environment included
        mlflow.set_experiment(experiment_id=tracker.experiment_id)
        return mlflow.load_table(LEADERBOARD_TABLE, run_ids=[run_id])


def test_experiments_open_in_the_training_view_when_created_and_when_reused(uri):
    client = MlflowClient(tracking_uri=uri)
    older = client.create_experiment("made-before-the-tag")  # as an older leukotune (or a person) left it
    for name in ("fresh", "made-before-the-tag"):
        experiment_id = Tracker(uri, name, log=lambda _msg: None).experiment_id
        assert client.get_experiment(experiment_id).tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND_TRAINING
    assert client.get_experiment_by_name("made-before-the-tag").experiment_id == older


@pytest.mark.parametrize("data, source_type, source_text, name", [
    (REAL, "local", "/data/C-NMC_Leukemia", "C-NMC_Leukemia"),
    (SYNTHETIC, "code", "synthetic:cells_per_subject=12,seed=0,subjects=8", "synthetic-cnmc"),
])
def test_one_dataset_input_per_side_with_the_fingerprint_as_digest(data, source_type, source_text, name):
    inputs = study_dataset_inputs(data, "subject", {"subjects": 8, "cells_per_subject": 12, "seed": 0})
    contexts = [{t.key: t.value for t in i.tags}["mlflow.data.context"] for i in inputs]
    assert contexts == ["train", "val"]
    for dataset_input, side in zip(inputs, contexts):
        dataset = dataset_input.dataset
        assert dataset.digest == data.fingerprint and dataset.name == f"{name}-{side}"
        assert dataset.source_type == source_type and source_text in dataset.source
        assert f'"cells": {sum(SPLIT[side].values())}' in dataset.profile


def test_a_test_side_in_the_data_summary_becomes_a_third_input():
    inputs = study_dataset_inputs(summary(split={**SPLIT, "test": {"all": 5, "hem": 5}}), "subject")
    assert [i.dataset.name for i in inputs] == ["C-NMC_Leukemia-train", "C-NMC_Leukemia-val", "C-NMC_Leukemia-test"]


def test_dataset_inputs_are_stored_on_the_run_and_copied_to_another(tracker):
    parent = tracker.create_run("study", {})
    log_dataset_inputs(tracker, parent, study_dataset_inputs(REAL, "subject"))
    trial = tracker.create_run("trial", {})
    log_dataset_inputs(tracker, trial, run_dataset_inputs(tracker, parent))
    for run_id in (parent, trial):
        stored = tracker.client.get_run(run_id).inputs.dataset_inputs
        assert sorted(i.dataset.name for i in stored) == ["C-NMC_Leukemia-train", "C-NMC_Leukemia-val"]
        assert {i.dataset.digest for i in stored} == {REAL.fingerprint}


def test_leaderboard_is_an_mlflow_table_written_once_even_when_a_resumed_study_logs_it_again(tracker):
    run_id = tracker.create_run("study", {})
    frame = leaderboard_frame(sorted(LEADERBOARD, key=lambda r: -(r["best"] or -1)), "val_f1_weighted")
    log_leaderboard_table(tracker, run_id, frame)
    log_leaderboard_table(tracker, run_id, frame)  # a resumed study ends again: same rows, not twice as many
    table = load_table(tracker, run_id)
    assert list(table.columns) == ["rank", "trial", "status", "epochs", "device", "best_val_f1_weighted", "conv_layers",
                                   "lr"]
    assert table["trial"].tolist() == ["t2", "t1", "t3"] and table["rank"].tolist() == [1, 2, 3]
    assert table["best_val_f1_weighted"].tolist()[:2] == pytest.approx([0.83, 0.61])


def test_the_study_run_carries_the_winners_metric_and_parameters(tracker):
    run_id = tracker.create_run("study", {})
    log_winner(tracker, run_id, LEADERBOARD[1], "val_f1_weighted", trials=3, complete=True)
    run = tracker.client.get_run(run_id)
    assert run.data.metrics["best_val_f1_weighted"] == 0.83 and run.data.metrics["trials"] == 3
    assert run.data.params == {"lr": "0.002", "conv_layers": "4"}
    assert run.data.tags["leukotune.best_trial_id"] == "t2"


def test_the_test_side_says_where_its_cells_come_from():
    with_test = summary(split={**SPLIT, "test": {"all": 5, "hem": 5}}, test_source="prelim")
    test_input = study_dataset_inputs(with_test, "subject")[-1]
    assert {t.key: t.value for t in test_input.tags} == {
        "mlflow.data.context": "test", "leukotune.split": "subject", "leukotune.test_source": "prelim"}
