"""The one Tune callback of a study: each trial event reaches the study's MLflow recorder, its console and its watch
on the cluster, and what Tune pickles of it is the study id alone (real MLflow on SQLite, fake trials, no Ray)."""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest

from leukotune.tuner.tracking import Tracker, TrialRecorder
from leukotune.tuner.tune.console import StudyConsole
from leukotune.tuner.tune.events import StopWhenNodeUnfit, StudyEvents, attach, detach

STUDY = "events-study"


def fake_trial(trial_id: str, error_file: str = "") -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, status="RUNNING", config={"lr": 0.01}, last_result={}, checkpoint=None,
                           error_file=error_file)


@pytest.fixture
def study(tmp_path: Path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "events", log=lambda _msg: None)
    parent = tracker.create_run("study", {"leukotune.kind": "study", "leukotune.study_id": STUDY})
    recorder = TrialRecorder(tracker, parent, STUDY, "val_f1_weighted", epochs=3, log_models=0,
                             log=lambda _msg: None)
    stream = io.StringIO()
    console = StudyConsole(total=2, metric="val_f1_weighted", mode="max", epochs=3, scheduler="asha", stream=stream)
    live = attach(STUDY, recorder, console)
    yield live, stream
    detach(STUDY)
    recorder.close()


def test_tune_pickles_the_study_id_only_and_the_copy_reaches_the_live_study(study):
    live, stream = study
    restored = pickle.loads(pickle.dumps(StudyEvents(STUDY)))  # as Tune saves and restores its experiment state
    assert vars(restored) == {"study_id": STUDY}
    assert restored.live is live
    trial = fake_trial("t1")
    restored.on_trial_start(0, [trial], trial)
    assert stream.getvalue() == "trial t1 started  lr=0.01\n"
    assert "t1" in live.recorder.run_ids  # the MLflow run exists once its trial's first line is printed


def test_an_epoch_is_printed_once_even_when_tune_replays_it(study):
    live, stream = study
    events, trial = StudyEvents(STUDY), fake_trial("t1")
    for epoch in (1, 2, 2, 1, 3):  # Tune replays results after a trial restarts from a checkpoint
        events.on_trial_result(0, [trial], trial, {"epoch": epoch, "val_f1_weighted": 0.5, "val_accuracy": 0.75})
    lines = stream.getvalue().splitlines()
    assert lines == [f"trial t1 epoch {e}/3  val_f1_weighted 0.5000  val_acc 0.7500" for e in (1, 2, 3)]


def test_a_trial_failing_on_an_unfit_node_stops_the_whole_study(study, tmp_path: Path):
    live, _stream = study
    stopper, events = pickle.loads(pickle.dumps(StopWhenNodeUnfit(STUDY))), StudyEvents(STUDY)
    error = tmp_path / "error.txt"
    error.write_text("ValueError: an ordinary bug\n")
    ordinary = fake_trial("t1", str(error))
    events.on_trial_recover(0, [ordinary], ordinary)
    assert not stopper.stop_all() and live.stopped is None
    error.write_text("ray.exceptions.RayTaskError: GpuUnusableError: GPU unusable on node 10.0.0.7\n")
    unfit = fake_trial("t2", str(error))
    events.on_trial_error(0, [ordinary, unfit], unfit)
    assert stopper.stop_all()
    assert live.stopped == "trial t2: GPU unusable on node 10.0.0.7"
