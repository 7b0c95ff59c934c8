"""What a study keeps once its trials have ended: the top trials' best checkpoints, whole and loadable; nothing of
a trial that can still run or be resumed is touched, nor any folder that is not a leukotune checkpoint."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from leukotune.models import get_model
from leukotune.tuner.config import load_study
from leukotune.tuner.train.checkpoints import BEST_FILE, STATE_FILE, load_best, rebuild_model, write_checkpoint
from leukotune.tuner.tune.retention import prune_checkpoints, trials_to_keep

from conftest import SMOKE

METRIC = "val_f1_weighted"
CNN = {"conv_layers": 2, "kernel_size": 3, "base_filters": 4, "dense": 8, "dropout": 0.0, "image_size": 64}


def trial(root: Path, trial_id: str, status: str, best: float | None, folders: int = 2) -> SimpleNamespace:
    """A trial folder as Tune leaves it: result.json and `folders` checkpoints, the newest one last."""
    trial_dir = root / f"trial_{trial_id}"
    trial_dir.mkdir(parents=True)
    (trial_dir / "result.json").write_text("{}\n")
    model = get_model("cnn", **CNN)
    for index in range(folders):
        best_payload = {"model": model.state_dict(), "model_name": "cnn", "model_kwargs": CNN, "epoch": index + 1}
        write_checkpoint(trial_dir / f"checkpoint_{index:06d}", {"epoch": index + 1, "model": model.state_dict()},
                         best_payload)
    latest = trial_dir / f"checkpoint_{folders - 1:06d}"
    return SimpleNamespace(trial_id=trial_id, status=status, last_result={f"best_{METRIC}": best},
                           checkpoint=SimpleNamespace(path=str(latest)), dir=trial_dir, latest=latest)


def sizes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def test_ended_trials_keep_only_the_top_best_checkpoints(tmp_path):
    trials = [trial(tmp_path, "a", "TERMINATED", 0.9), trial(tmp_path, "b", "TERMINATED", 0.5),
              trial(tmp_path, "c", "TERMINATED", 0.7), trial(tmp_path, "d", "TERMINATED", float("nan")),
              trial(tmp_path, "e", "RUNNING", 0.99), trial(tmp_path, "f", "ERROR", 0.95)]
    stray = trials[1].dir / "checkpoint_000009"  # not ours (no manifest): never removed
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    before = sizes(tmp_path)
    pruned = prune_checkpoints(trials, METRIC, "max", 2, study_complete=False, log=lambda _m: None)
    a, b, c, d, e, f = trials
    for top in (a, c):  # the two best that ended: the newest folder's best.pt, whole, and its manifest
        assert sorted(p.name for p in top.dir.iterdir()) == ["checkpoint_000001", "result.json"]
        assert sorted(p.name for p in top.latest.iterdir()) == [BEST_FILE, "checkpoint.json"]
        rebuild_model(load_best(top.latest))
    for gone in (b, d):  # outside the top, or never a finite score
        assert sorted(p.name for p in gone.dir.iterdir()) == [*(["checkpoint_000009"] if gone is b else []),
                                                               "result.json"]
    for untouched in (e, f):  # may still run, or be resumed by --resume
        assert (untouched.latest / STATE_FILE).is_file() and (untouched.dir / "checkpoint_000000").is_dir()
    assert (stray / "notes.txt").read_text() == "mine"
    assert pruned.trials == 4 and pruned.removed_bytes == before - sizes(tmp_path) > 0
    assert prune_checkpoints(trials, METRIC, "max", 2, study_complete=False, log=lambda _m: None).removed_bytes == 0


def test_a_complete_study_also_clears_errored_trials_and_keep_all_keeps_every_best(tmp_path):
    trials = [trial(tmp_path, "a", "TERMINATED", 0.9), trial(tmp_path, "f", "ERROR", 0.95)]
    prune_checkpoints(trials, METRIC, "max", "all", study_complete=True, log=lambda _m: None)
    assert (trials[0].latest / BEST_FILE).is_file() and not (trials[0].dir / "checkpoint_000000").exists()
    assert sorted(p.name for p in trials[1].dir.iterdir()) == ["result.json"]


def test_the_study_keeps_enough_trials_for_export_and_the_test_side():
    assert trials_to_keep(load_study(SMOKE, ["tracking.log_models=1", "tune.test_top_k=3"])) == 3
    assert trials_to_keep(load_study(SMOKE, ["tracking.log_models=5", "tune.test_top_k=0"])) == 5
    assert trials_to_keep(load_study(SMOKE, ["tracking.log_models=all"])) == "all"


def test_a_trial_that_finishes_outside_the_top_is_freed_at_once_and_a_top_one_is_not(tmp_path):
    from leukotune.tuner.tune.retention import prune_finished_trial

    a, b = trial(tmp_path, "a", "TERMINATED", 0.9), trial(tmp_path, "b", "TERMINATED", 0.8)
    running = trial(tmp_path, "r", "RUNNING", 0.99)
    low = trial(tmp_path, "c", "TERMINATED", 0.5)
    everyone = [a, b, running, low]
    assert prune_finished_trial(low, everyone, METRIC, "max", 2) > 0  # third of the ended: it cannot come back
    assert sorted(p.name for p in low.dir.iterdir()) == ["result.json"]
    for kept in (a, b):  # in the top two: whole until the study's end thins them
        assert prune_finished_trial(kept, everyone, METRIC, "max", 2) == 0 and (kept.latest / STATE_FILE).is_file()
    assert prune_finished_trial(running, everyone, METRIC, "max", 2) == 0  # not finished
    assert prune_finished_trial(low, everyone, METRIC, "max", "all") == 0
