"""Honest numbers end to end: one real study (Ray, Optuna, MLflow on SQLite) of 8 short trials, then promote and
evaluate from the registry. Slow, still run by CI."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from leukotune.tuner.evaluation.calibration import CELL_SCORES_FILE, calibrate
from leukotune.tuner.evaluation.intervals import CI_METRICS
from leukotune.tuner.metrics import TAG_UNDEFINED, confusion_from_metrics, undefined_reasons

from conftest import REPO_ROOT, SMOKE, require_cnmc_sample

pytestmark = pytest.mark.slow

EXPERIMENT = "honest"
MODEL = "leukotune-honest"
STUDY = ["data.synthetic.subjects=8", "data.synthetic.cells_per_subject=12", "train.batch_size=16",
         "train.epochs=2", "tune.num_samples=8", "tune.test_top_k=3", f"tracking.experiment={EXPERIMENT}"]


def _cli(args: list[str], workdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leukotune.tuner.cli", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("honest")
    env = {**os.environ, "LEUKOTUNE_CACHE_DIR": str(workdir / "cache"), "PYTHONPATH": str(REPO_ROOT),
           "LEUKOTUNE_MIN_FREE_GB": "0.1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    result = _cli(["tune", "--config", str(SMOKE), *[a for v in STUDY for a in ("--set", v)]], workdir, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    uri = f"sqlite:///{workdir / '.leukotune' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get("leukotune.kind") == "study")
    children = [r for r in runs if r.data.tags.get("leukotune.kind") == "trial"]
    return {"workdir": workdir, "env": env, "stdout": result.stdout, "client": client, "parent": parent,
            "children": children}


def _download_json(client: MlflowClient, run_id: str, path: str, tmp_path: Path):
    return json.loads(Path(client.download_artifacts(run_id, path, str(tmp_path))).read_text())


def test_test_side_is_subject_disjoint_from_train_and_val(study, tmp_path):
    sides = _download_json(study["client"], study["parent"].info.run_id, "data/split.json", tmp_path)
    train, val, test = (set(sides[k]) for k in ("train", "val", "test"))
    assert test and train and val
    assert not test & train and not test & val and not train & val
    params = study["parent"].data.params
    assert int(params["data.test_subjects"]) == len(test) and params["data.test_source"] == "subjects"
    assert int(params["data.test_all_cells"]) > 0 and int(params["data.test_hem_cells"]) > 0


def test_top_trials_and_parent_have_test_metrics_with_intervals_around_them(study):
    assert len(study["children"]) == 8
    finished = [c for c in study["children"] if c.info.status == "FINISHED"]
    by_val = sorted(finished, key=lambda r: (-r.data.metrics["best_val_f1_weighted"],
                                             r.data.tags["leukotune.trial_id"]))
    tested = [c for c in study["children"] if "test_f1_weighted" in c.data.metrics]
    assert {c.info.run_id for c in tested} == {c.info.run_id for c in by_val[:3]}
    parent = study["parent"].data.metrics
    for metrics in [c.data.metrics for c in tested] + [parent]:
        for name in CI_METRICS:
            low, point, high = (metrics[f"test_{name}_ci95_low"], metrics[f"test_{name}"],
                                metrics[f"test_{name}_ci95_high"])
            assert low <= point <= high, (name, low, point, high)
        assert metrics["test_cells"] > 0 and "test_cm_true_hem_pred_all" in metrics
    winner = by_val[0].data.metrics
    assert parent["test_f1_weighted"] == pytest.approx(winner["test_f1_weighted"])
    assert parent["selection_gap"] == pytest.approx(winner["best_val_f1_weighted"] - winner["test_f1_weighted"])
    assert "test (95% CI)" in study["stdout"]


def test_an_undefined_test_metric_is_a_tag_with_its_reason_never_a_number(study):
    """Which test metrics are undefined follows from each run's own test confusion counts (a class never called has
    no precision, ...): exactly those are tags holding the reason, and every logged test number is finite."""
    tested = [c for c in study["children"] if "test_f1_weighted" in c.data.metrics] + [study["parent"]]
    for run in tested:
        metrics, tags = run.data.metrics, run.data.tags
        assert all(math.isfinite(v) for k, v in metrics.items() if k.startswith("test_")), run.info.run_name
        expected = undefined_reasons(confusion_from_metrics(metrics, "test_"))
        for name, reason in expected.items():
            assert tags[f"{TAG_UNDEFINED}test_{name}"] == reason and f"test_{name}" not in metrics
        cell_tags = {k.removeprefix(f"{TAG_UNDEFINED}test_").removesuffix("_ci95_low").removesuffix("_ci95_high")
                     for k in tags if k.startswith(f"{TAG_UNDEFINED}test_") and "patient" not in k}
        assert cell_tags == set(expected)


def test_each_tested_trial_has_its_patients_saliency_and_software(study, tmp_path):
    sides = _download_json(study["client"], study["parent"].info.run_id, "data/split.json", tmp_path / "p")
    tested = [c for c in study["children"] if "test_f1_weighted" in c.data.metrics]
    assert len(tested) == 3
    for run in tested:
        run_id, metrics, tags = run.info.run_id, run.data.metrics, run.data.tags
        table = _download_json(study["client"], run_id, "patients.json", tmp_path / run_id)
        rows = [dict(zip(table["columns"], row)) for row in table["data"]]
        assert sorted(r["subject"] for r in rows) == sorted(sides["test"])
        # The table at 0.5 on calibrated P(ALL): each subject's score is the mean of its cells.
        cells = _download_json(study["client"], run_id, CELL_SCORES_FILE, tmp_path / run_id)
        prob = calibrate(np.asarray(cells["test"]["p_all"]), cells["temperature"])
        subjects = np.asarray(cells["test"]["subjects"])
        for row in rows:
            assert row["score"] == pytest.approx(prob[subjects == row["subject"]].mean(), abs=1e-5)
            assert row["call"] == ("all" if row["score"] >= 0.5 else "hem")
        for cls in ("all", "hem"):
            right = sum(r["truth"] == cls and r["call"] == cls for r in rows)
            assert metrics[f"test_patient_cm_true_{cls}_pred_{cls}"] == right
            assert metrics[f"test_patients_{cls}"] == sum(r["truth"] == cls for r in rows)
        for name in ("sensitivity", "specificity"):
            key = f"test_patient_{name}"
            assert metrics[f"{key}_ci95_low"] <= metrics[key] <= metrics[f"{key}_ci95_high"]
        listed = {a.path for a in study["client"].list_artifacts(run_id, "saliency")}
        summary = _download_json(study["client"], run_id, "saliency/summary.json", tmp_path / run_id)
        assert "saliency/randomisation_check.png" in listed
        assert ("saliency/gradcam_cells.png" in listed) == summary["passed"]
        assert tags["leukotune.software.torch"] and tags["leukotune.software.mlflow"]
    assert "saliency: Grad-CAM randomisation check" in study["stdout"]
    assert "patients on test (mean calibrated P(ALL) >= 0.5)" in study["stdout"]


def test_promote_gates_on_test_then_evaluate_reports_every_cell(study, tmp_path):
    workdir, env = study["workdir"], study["env"]
    winner = max((c for c in study["children"] if "test_f1_weighted" in c.data.metrics),
                 key=lambda r: r.data.metrics["best_val_f1_weighted"]).data.metrics
    val, test = winner["best_val_f1_weighted"], winner["test_f1_weighted"]
    # Above the test score; between test and validation whenever validation reads higher (the usual case).
    bar = (val + test) / 2 if val > test else test + 1e-3
    refused = _cli(["promote", "--experiment", EXPERIMENT, "--min", f"{bar:.6f}"], workdir, env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "test_f1_weighted" in refused.stderr and "below --min" in refused.stderr
    promoted = _cli(["promote", "--experiment", EXPERIMENT], workdir, env)
    assert promoted.returncode == 0, promoted.stderr
    version = study["client"].get_model_version_by_alias(MODEL, "champion")
    assert float(version.tags["test.f1_weighted"]) == pytest.approx(test, rel=1e-4)
    assert "Validation vs test" in version.description and "Research use only" in version.description

    # Checked only here: the promotion above does not need the real cells and still runs without ../shared.
    sample = require_cnmc_sample()
    evaluated = _cli(["evaluate", "--model", f"models:/{MODEL}@champion", "--data", str(sample), "--json"],
                     workdir, env)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["cells"] == 60 and report["skipped"] == []
    metrics = report["metrics"]
    for name in CI_METRICS:
        assert metrics[f"{name}_ci95_low"] <= metrics[name] <= metrics[f"{name}_ci95_high"]

    copy = tmp_path / "cohort"
    shutil.copytree(sample, copy)
    broken = sorted((copy / "training_data").rglob("*.bmp"))[0]
    broken.write_bytes(b"BM not really a bitmap")
    evaluated = _cli(["evaluate", "--model", f"models:/{MODEL}@champion", "--data", str(copy), "--json"],
                     workdir, env)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["cells"] == 59 and [item["path"] for item in report["skipped"]] == [str(broken)]
