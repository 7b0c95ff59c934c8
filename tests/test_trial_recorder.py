"""TrialRecorder on its own: real MLflow on SQLite, fake Tune trial events (no Ray needed).

What it must guarantee: one child run per trial under the parent, one value per epoch even when Tune replays
results after a restart, and every run closed in the state its trial ended in.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.entities import ViewType

from leukotune.tuner.tracking import Tracker, TrialRecorder

STUDY = "recorder-study"


def fake_trial(trial_id: str, status: str = "RUNNING", error_file: str = "") -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, status=status, config={"lr": 0.01, "conv_layers": 3},
                           last_result={}, checkpoint=None, error_file=error_file)


def result(epoch: int, value: float) -> dict:
    return {"epoch": epoch, "val_f1_weighted": value, "val_loss": 1.0 / epoch, "val_accuracy": value}


@pytest.fixture
def tracker(tmp_path: Path) -> Tracker:
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "recorder", log=lambda _msg: None)


def new_recorder(tracker: Tracker, parent_run_id: str) -> TrialRecorder:
    return TrialRecorder(tracker, parent_run_id, STUDY, "val_f1_weighted", epochs=3, log_models=0,
                         log=lambda _msg: None)


def parent(tracker: Tracker) -> str:
    return tracker.create_run("study", {"leukotune.kind": "study", "leukotune.study_id": STUDY})


def steps(tracker: Tracker, run_id: str) -> list[int]:
    return [m.step for m in tracker.client.get_metric_history(run_id, "val_loss")]


def test_each_epoch_is_logged_once_even_when_results_are_replayed(tracker: Tracker) -> None:
    recorder = new_recorder(tracker, parent(tracker))
    trial = fake_trial("t1")
    for epoch in (1, 2, 2, 1, 3):  # Tune replays results after a trial restarts from a checkpoint
        recorder.record_result(trial, result(epoch, 0.5 + epoch / 10))
    run_id = recorder.run_for(trial)
    assert steps(tracker, run_id) == [1, 2, 3]
    run = tracker.client.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == recorder.parent_run_id
    assert run.data.params["lr"] == "0.01"


def test_a_resumed_study_finds_the_trial_run_again_and_does_not_relog(tracker: Tracker) -> None:
    parent_id = parent(tracker)
    first = new_recorder(tracker, parent_id)
    trial = fake_trial("t1")
    first.record_result(trial, result(1, 0.6))
    first.record_result(trial, result(2, 0.7))
    run_id = first.run_for(trial)

    resumed = new_recorder(tracker, parent_id)  # a new driver after a crash: nothing in memory
    for epoch in (1, 2, 3):
        resumed.record_result(trial, result(epoch, 0.8))
    assert resumed.run_for(trial) == run_id
    assert steps(tracker, run_id) == [1, 2, 3]
    assert tracker.client.get_metric_history(run_id, "val_f1_weighted")[1].value == pytest.approx(0.7)


def test_close_settles_every_open_run_by_its_trial_state(tracker: Tracker, tmp_path: Path) -> None:
    recorder = new_recorder(tracker, parent(tracker))
    error_file = tmp_path / "error.txt"
    error_file.write_text("RuntimeError: worker died")
    finished, failed = fake_trial("done", "TERMINATED"), fake_trial("broken", "ERROR", str(error_file))
    running, orphan = fake_trial("cut"), fake_trial("unknown")
    for trial in (finished, failed, running, orphan):
        recorder.record_result(trial, result(1, 0.5))
    runs = {t.trial_id: recorder.run_for(t) for t in (finished, failed, running, orphan)}
    recorder.trials = [finished, failed, running]  # `unknown` started after Tune's last state snapshot

    closed = recorder.close()

    status = {tid: tracker.client.get_run(run_id).info.status for tid, run_id in runs.items()}
    assert status == {"done": "FINISHED", "broken": "FAILED", "cut": "KILLED", "unknown": "KILLED"}
    assert closed["killed"] == 1
    error_text = tracker.client.download_artifacts(runs["broken"], "error.txt", str(tmp_path / "dl"))
    assert "worker died" in Path(error_text).read_text()
    retired = tracker.client.get_run(runs["unknown"])
    assert retired.data.tags["leukotune.orphaned"] == "true" and retired.info.lifecycle_stage == "deleted"
    visible = tracker.client.search_runs([tracker.experiment_id], run_view_type=ViewType.ACTIVE_ONLY)
    assert {r.data.tags.get("leukotune.trial_id") for r in visible} == {"done", "broken", "cut", None}


def test_a_completed_trial_is_tagged_with_whether_asha_stopped_it(tracker: Tracker) -> None:
    recorder = new_recorder(tracker, parent(tracker))
    stopped, full = fake_trial("stopped", "TERMINATED"), fake_trial("full", "TERMINATED")
    recorder.record_result(stopped, result(1, 0.4))
    for epoch in (1, 2, 3):
        recorder.record_result(full, result(epoch, 0.9))
    recorder.record_complete(stopped)
    recorder.record_complete(full)
    recorder.trials = [stopped, full]
    recorder.close()
    tags = {t.trial_id: tracker.client.get_run(recorder.run_for(t)).data.tags for t in (stopped, full)}
    assert tags["stopped"]["leukotune.stopped_early"] == "true"
    assert tags["full"]["leukotune.stopped_early"] == "false"
    assert all(tracker.client.get_run(recorder.run_for(t)).info.status == "FINISHED" for t in (stopped, full))


def test_find_runs_reads_every_page(tracker: Tracker) -> None:
    """A study of thousands of trials outgrows one search page; the lookups that settle its runs must see them all."""
    made = {tracker.create_run(f"trial-{i}", {"leukotune.study_id": STUDY}) for i in range(7)}
    found = tracker.find_runs(f"tags.`leukotune.study_id` = '{STUDY}'", page_size=3)
    assert {run.info.run_id for run in found} == made
