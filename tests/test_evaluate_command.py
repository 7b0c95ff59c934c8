"""`leukotune evaluate`: metrics with patient intervals on a labelled folder, unreadable files listed and skipped;
and the parts of the study's test evaluation that need no Ray (scoring a checkpoint, the metric names, the
selection gap, the leaderboard)."""
from __future__ import annotations

import json
import shutil

import pytest
from test_promote_predict import _log_trial

from leukotune.tuner.cli.main import main
from leukotune.tuner.config import load_study
from leukotune.tuner.evaluation.intervals import CI_METRICS
from leukotune.tuner.evaluation.test_side import score_checkpoints
from leukotune.tuner.metrics import metric_on_test
from leukotune.tuner.tracking.client import TAG_KIND, TAG_MODEL_URI, Tracker
from leukotune.tuner.train.checkpoints import BEST_FILE, read_checkpoint_file
from leukotune.tuner.train.data_source import prepare_study_data
from leukotune.tuner.train.loop import run_training
from leukotune.tuner.train.sessions import LocalSession
from leukotune.tuner.tune.holdout import add_test_scores, selection_gap

from conftest import SMOKE


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    tracker = Tracker(uri, "evaluate-test", log=lambda _msg: None)
    parent = tracker.create_run("study", {TAG_KIND: "study"})
    run_id = _log_trial(tracker, parent, "trial-a", [0.8], 1_700_000_000_000, seed=4)
    return {"uri": uri, "model_uri": tracker.client.get_run(run_id).data.tags[TAG_MODEL_URI]}


def test_evaluate_reports_metrics_and_intervals_and_lists_the_corrupt_file(model, cnmc_sample, tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    folder = tmp_path / "cohort"
    shutil.copytree(cnmc_sample, folder)
    broken = sorted((folder / "training_data").rglob("*.bmp"))[3]
    broken.write_bytes(b"BM truncated")
    (folder / "training_data" / "fold_0" / "all" / "notes.txt").write_text("not a cell")
    code = main(["evaluate", "--model", model["model_uri"], "--data", str(folder), "--json",
                 "--tracking-uri", model["uri"]])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cells"] == 59 and report["subjects"] >= 30
    reasons = {item["path"]: item["reason"] for item in report["skipped"]}
    assert set(reasons) == {str(broken), str(folder / "training_data" / "fold_0" / "all" / "notes.txt")}
    metrics = report["metrics"]
    for name in CI_METRICS:
        assert metrics[f"{name}_ci95_low"] <= metrics[name] <= metrics[f"{name}_ci95_high"]
    assert sum(metrics[f"cm_true_{t}_pred_{p}"] for t in ("all", "hem") for p in ("all", "hem")) == 59


def test_evaluate_table_and_a_missing_folder(model, cnmc_sample, tmp_path, capsys):
    assert main(["evaluate", "--model", model["model_uri"], "--data", str(cnmc_sample),
                 "--tracking-uri", model["uri"]]) == 0
    out = capsys.readouterr().out
    assert "60 cells of 37 subjects" in out and "95% CI (bootstrap over patients)" in out
    assert main(["evaluate", "--model", model["model_uri"], "--data", str(tmp_path / "nowhere"),
                 "--tracking-uri", model["uri"]]) == 2
    assert "dataset folder does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("metric, expected", [
    ("val_f1_weighted", "test_f1_weighted"), ("best_val_f1_weighted", "test_f1_weighted"),
    ("val_loss", "test_loss"), ("train_loss", "train_loss"),
])
def test_metric_on_test(metric: str, expected: str) -> None:
    assert metric_on_test(metric) == expected


@pytest.mark.parametrize("val, test, mode, gap", [
    (0.9, 0.7, "max", 0.2), (0.3, 0.5, "min", 0.2), (0.6, 0.8, "max", -0.2), (None, 0.7, "max", None),
    (0.9, float("nan"), "max", None),
])
def test_selection_gap_is_positive_when_validation_flattered(val, test, mode, gap) -> None:
    result = selection_gap(val, test, mode)
    assert result == (None if gap is None else pytest.approx(gap))


def test_leaderboard_rows_get_test_scores_beside_validation() -> None:
    rows = [{"trial_id": "a", "best": 0.9}, {"trial_id": "b", "best": 0.8}]
    scores = {"a": {"test_f1_weighted": 0.7, "test_f1_weighted_ci95_low": 0.6, "test_f1_weighted_ci95_high": 0.75}}
    add_test_scores(rows, scores, "val_f1_weighted")
    assert rows[0]["test"] == 0.7 and rows[0]["test_ci95"] == [0.6, 0.75]
    assert rows[1]["test"] is None and rows[1]["test_ci95"] is None


def test_a_trained_checkpoint_is_scored_on_the_test_side_only(tmp_path, monkeypatch):
    # No Ray: the function the study's Ray task runs, on a real checkpoint of the one training loop.
    monkeypatch.setenv("LEUKOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    study = load_study(SMOKE, ["data.synthetic.subjects=8", "data.synthetic.cells_per_subject=10", "train.epochs=1",
                               "train.batch_size=16"])
    run_training(study, LocalSession(use_gpu="false", keep_dir=tmp_path / "ckpt"), log=lambda _m: None)
    best = read_checkpoint_file(tmp_path / "ckpt" / "epoch_0001", BEST_FILE)
    broken = {**best, "model": {}}  # weights that do not fit the network
    scored, failed = score_checkpoints([best, broken], seed=0)
    test_side = prepare_study_data(study).test_idx
    assert scored["test_cells"] == len(test_side) == 20 and scored["test_subjects"] == 2
    for name in CI_METRICS:
        assert scored[f"test_{name}_ci95_low"] <= scored[f"test_{name}"] <= scored[f"test_{name}_ci95_high"]
    assert isinstance(failed, str) and "RuntimeError" in failed
