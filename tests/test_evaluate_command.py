"""`leukotune evaluate`: metrics with patient intervals on a labelled folder, unreadable files listed and skipped,
the patient's call (a table of patients, patient metrics with exact intervals), undefined metrics read as such;
and the parts of the study's test evaluation that need no Ray (scoring a checkpoint, the metric names, the
selection gap, the leaderboard)."""
from __future__ import annotations

import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from test_promote_predict import _log_trial

from leukotune.data import parse_cell_name

from leukotune.tuner.cli.main import main
from leukotune.tuner.config import load_study
from leukotune.tuner.evaluation.intervals import CI_METRICS
from leukotune.tuner.evaluation.patients import exact_interval
from leukotune.tuner.evaluation.test_side import score_checkpoints
from leukotune.tuner.metrics import metric_on_test, split_undefined
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


def test_evaluate_gives_each_patient_the_mean_of_what_predict_gives_its_cells(model, cnmc_sample, capsys):
    assert main(["evaluate", "--model", model["model_uri"], "--data", str(cnmc_sample), "--json",
                 "--tracking-uri", model["uri"]]) == 0
    report = json.loads(capsys.readouterr().out)
    assert main(["predict", "--model", model["model_uri"], str(cnmc_sample), "--json",
                 "--tracking-uri", model["uri"]]) == 0
    by_subject = defaultdict(list)
    for row in json.loads(capsys.readouterr().out)["predictions"]:
        by_subject[parse_cell_name(Path(row["file"]).name)[0]].append(row["p_all"])
    patients = report["patients"]
    table = {row["subject"]: row for row in patients["table"]}
    assert set(table) == set(by_subject) and len(table) == report["subjects"] == 37
    for subject, probs in by_subject.items():
        row = table[subject]
        assert row["cells"] == len(probs) and row["score"] == pytest.approx(np.mean(probs), abs=1e-5)
        assert row["call"] == ("all" if row["score"] >= report["threshold"] else "hem")
        assert row["truth"] == ("hem" if subject.startswith("H") else "all")
    metrics = patients["metrics"]
    for cls, name in (("all", "sensitivity"), ("hem", "specificity")):
        rows = [row for row in table.values() if row["truth"] == cls]
        right = sum(row["call"] == cls for row in rows)
        assert metrics[f"patients_{cls}"] == len(rows)
        assert metrics[f"patient_{name}"] == pytest.approx(right / len(rows))
        low, high = exact_interval(right, len(rows))
        assert (metrics[f"patient_{name}_ci95_low"], metrics[f"patient_{name}_ci95_high"]) == pytest.approx((low, high))


def test_evaluate_on_a_cohort_without_normal_cells_reads_undefined_with_the_reason(model, cnmc_sample, tmp_path,
                                                                                    capsys):
    folder = tmp_path / "all-only"
    shutil.copytree(cnmc_sample / "training_data", folder, ignore=shutil.ignore_patterns("hem"))
    assert main(["evaluate", "--model", model["model_uri"], "--data", str(folder),
                 "--tracking-uri", model["uri"]]) == 0
    out = capsys.readouterr().out
    assert "30 cells of 23 subjects" in out and "nan" not in out.lower()
    assert "  specificity         undefined (no normal cells in this cohort)" in out.splitlines()
    assert "  roc_auc             undefined (no normal cells in this cohort, and it needs both classes)" in out
    # the patients: 23 rows, each ALL by truth; their specificity and ROC-AUC are undefined as well
    rows = re.findall(r"^  (\d+) +(\d+) +(0\.\d{4}|1\.0000) +(\d+) of \2 +(all|hem) +(all|hem)", out, re.MULTILINE)
    assert len(rows) == 23 and {row[5] for row in rows} == {"all"} and sum(int(row[1]) for row in rows) == 30
    assert "  specificity         undefined (no normal patients in this cohort)" in out.splitlines()
    called = sum(row[4] == "all" for row in rows)
    assert re.search(rf"  sensitivity +[0-9.]+ +[0-9.]+ - [0-9.]+  \({called} of 23 ALL patients called ALL\)", out)
    assert main(["evaluate", "--model", model["model_uri"], "--data", str(folder), "--json",
                 "--tracking-uri", model["uri"]]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metrics"]["specificity"] is None and report["metrics"]["specificity_ci95_low"] is None
    assert report["undefined"]["specificity_ci95_low"] == "no normal cells in this cohort"
    assert report["patients"]["metrics"]["patient_roc_auc"] is None
    assert report["patients"]["undefined"]["patient_roc_auc"].startswith("no normal patients in this cohort")


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


def test_mlflow_gets_no_number_for_an_undefined_test_metric_but_a_tag_with_its_reason(model):
    metrics = {"test_sensitivity": 0.5, "test_specificity": float("nan")}
    defined, tags = split_undefined(metrics, {"test_specificity": "no normal cells in this cohort"})
    assert defined == {"test_sensitivity": 0.5}
    assert tags == {"leukotune.undefined.test_specificity": "no normal cells in this cohort"}
    uri = model["uri"]  # the module's store: a fresh SQLite store costs seconds to create
    tracker = Tracker(uri, "undefined", log=lambda _msg: None)
    run_id = tracker.create_run("trial", {})
    tracker.log_metrics(run_id, defined, step=0)
    tracker.set_tags(run_id, tags)
    data = MlflowClient(tracking_uri=uri).get_run(run_id).data
    assert data.metrics == {"test_sensitivity": 0.5}
    assert data.tags["leukotune.undefined.test_specificity"] == "no normal cells in this cohort"
