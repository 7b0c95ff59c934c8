"""`leukotune tune --resume` at its edges: nothing to resume, a study that never got going, a study killed between two
of Tune's state saves (checkpoints its saved list still holds are gone), and a study that already finished."""
from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from ray.train import Checkpoint, CheckpointConfig
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.train._internal.session import _TrainingResult
from ray.tune.experiment.trial import Trial

from leukotune.tuner.config import load_study
from leukotune.tuner.tune.checkpoint_view import forget_missing_checkpoints
from leukotune.tuner.tune.plan import STUDY_FILE

from conftest import SMOKE, TINY, local_uri, sets, study_runs
from conftest import run_leukotune as run_cli
from studyproc import StudyProcess

RAY_NOISE = ("Traceback", "Path not found", "Error handling checkpoint")


def test_resume_with_no_study_is_one_line_and_exit_2(tmp_path, env):
    result = run_cli(["tune", "--config", str(SMOKE), "--resume"], tmp_path, env)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no study named 'smoke'" in result.stderr
    assert "Ray:" not in result.stdout


def test_resume_of_a_study_that_stopped_before_tune_saved_anything_says_so(tmp_path, env):
    # What a study leaves when it is stopped after planning but before Tune's first save: only leukotune's file.
    folder = tmp_path / ".leukotune" / "runs" / "smoke-20260101-000000"
    folder.mkdir(parents=True)
    (folder / STUDY_FILE).write_text(json.dumps({"study_id": folder.name, "parent_run_id": "x",
                                                 "config": load_study(SMOKE, [], None).to_dict()}))
    result = run_cli(["tune", "--config", str(SMOKE), "--resume"], tmp_path, env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "stopped before Tune saved any state" in result.stderr and "Traceback" not in result.stderr


def register(manager: _CheckpointManager, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    manager.register_checkpoint(_TrainingResult(checkpoint=Checkpoint(str(folder)), metrics={}))


def test_tune_checkpoint_list_is_made_true_to_the_disk_before_it_deletes_from_it(tmp_path):
    # Ray 2.60's own manager, as Tune restores it after a kill: it lists a checkpoint the killed driver deleted.
    stale = _CheckpointManager(CheckpointConfig(num_to_keep=2))
    register(stale, tmp_path / "a" / "checkpoint_000000")
    register(stale, tmp_path / "a" / "checkpoint_000001")
    shutil.rmtree(tmp_path / "a" / "checkpoint_000000")
    with pytest.raises(FileNotFoundError, match="Path not found"):  # what the resumed study logged as a traceback
        register(stale, tmp_path / "a" / "checkpoint_000002")

    manager = _CheckpointManager(CheckpointConfig(num_to_keep=2))
    register(manager, tmp_path / "b" / "checkpoint_000000")
    register(manager, tmp_path / "b" / "checkpoint_000001")
    shutil.rmtree(tmp_path / "b" / "checkpoint_000000")
    assert forget_missing_checkpoints(manager) == 1
    register(manager, tmp_path / "b" / "checkpoint_000002")  # Tune now deletes only what exists
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["checkpoint_000001", "checkpoint_000002"]
    assert forget_missing_checkpoints(manager) == 0


def saved_checkpoints(study_dir: Path) -> list[tuple[Trial, list[Path], Path]]:
    """Each trial in Tune's newest saved experiment state: (trial, checkpoints it lists, the latest one)."""
    state = json.loads(max(study_dir.glob("experiment_state-*.json")).read_text())
    found = []
    for json_state, run_metadata in state["trial_data"]:
        trial = Trial.from_json_state(json_state, stub=True)
        trial.restore_run_metadata(run_metadata)
        manager = trial.run_metadata.checkpoint_manager
        listed = [Path(r.checkpoint.path) for r in manager._checkpoint_results]
        latest = manager._latest_checkpoint_result
        found.append((trial, listed, Path(latest.checkpoint.path) if latest else None))
    return found


@pytest.mark.slow
@pytest.mark.e2e
def test_killed_study_resumes_without_a_traceback_then_reports_itself_finished(tmp_path, env):
    args = ["tune", "--config", str(SMOKE), *sets(TINY + [
        "tune.num_samples=2", "tune.max_concurrent=2", "train.epochs=6", "tune.scheduler=fifo",
        "tracking.experiment=resume-edges", "tracking.log_models=0"])]
    driver = StudyProcess(args, tmp_path, env)
    assert driver.wait_for(r"trial \w+ epoch 4/6"), driver.finish()[-3000:]
    os.killpg(driver.pid, signal.SIGKILL)
    driver.finish(timeout=30)

    # A driver killed between two of Tune's state saves has often already deleted (keeping the newest two)
    # checkpoints that the saved list still holds. Make that so for every unfinished trial, whatever the kill's
    # timing was: the older checkpoints it lists go, the one it restores from stays.
    study_dir = next((tmp_path / ".leukotune" / "runs").glob("smoke-*"))
    stale = 0
    for trial, listed, latest in saved_checkpoints(study_dir):
        for path in listed:
            if trial.status != "TERMINATED" and path != latest:
                shutil.rmtree(path, ignore_errors=True)
                stale += 1
    assert stale, "no unfinished trial had two checkpoints in Tune's saved state"

    resumed = run_cli(args + ["--resume"], tmp_path, env)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-4000:]
    for noise in RAY_NOISE:
        assert noise not in output, output[-4000:]
    _, parents, children = study_runs(local_uri(tmp_path), "resume-edges")
    assert parents[0].info.status == "FINISHED" and len(children) == 2
    assert all(child.info.status == "FINISHED" for child in children)

    # The study is finished now: --resume says so, prints its leaderboard, starts no Ray and changes nothing.
    again = run_cli(args + ["--resume"], tmp_path, env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already finished" in again.stdout and "leaderboard" in again.stdout
    assert "interrupted" not in again.stdout and "Ray:" not in again.stdout
    for child in children:
        assert child.data.tags["leukotune.trial_id"] in again.stdout
    _, parents_after, _ = study_runs(local_uri(tmp_path), "resume-edges")
    assert parents_after[0].info.status == "FINISHED"
