"""Calibrated probabilities and the operating point (issue 23, items 1 and 2): every number from a case small enough
to check by hand, then promote and predict against a real MLflow (SQLite), and once on a real smoke study."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from leukotune.data import PreparedData
from leukotune.models import FoldEnsemble
from leukotune.tuner.cli.main import main
from leukotune.tuner.evaluation.calibration import (
    CELL_SCORES_FILE,
    StoredDecision,
    TargetUnmetError,
    brier_score,
    calibrate,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    logit_scores,
    rates_with_intervals,
    reliability,
)
from leukotune.tuner.evaluation.inference import TrainedModel, probabilities
from leukotune.tuner.evaluation.logged_models import load_model
from leukotune.tuner.evaluation.test_side import OUT_OF_FOLD, validation_scores
from leukotune.tuner.registry.model_uris import process_tracking_uri
from leukotune.tuner.serving.calibrated_copy import TAG_COPIED_FROM
from leukotune.tuner.tracking.artifacts import reliability_figure
from leukotune.tuner.tracking.client import TAG_FINGERPRINT, TAG_KIND, TAG_MODEL_URI, Tracker

from conftest import SHARED_EXPERIMENT
from test_promote_predict import _log_trial
from test_tracking_figures import texts_outside


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def as_trained(calibrated, temperature: float) -> list[float]:
    """The P(ALL) at T = 1 whose calibration at `temperature` is `calibrated` (logits `temperature` times larger)."""
    return sigmoid(temperature * logit_scores(np.asarray(calibrated))).tolist()


# ---------------------------------------------------------------- temperature

def test_temperature_is_the_known_optimum_of_a_tiny_set():
    # Every cell scores +-2 and a quarter of each side is wrong: the NLL is least where sigmoid(2 / T) = 3/4, so
    # T = 2 / ln 3 = 1.8205 (the model is overconfident: it says 0.88 where 0.75 is true).
    p = sigmoid([2, 2, 2, 2, -2, -2, -2, -2])
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    fit = fit_temperature(p, y)
    assert fit.temperature == pytest.approx(2 / math.log(3), rel=1e-6) and not fit.at_bound
    assert calibrate(p, fit.temperature)[:4] == pytest.approx([0.75] * 4, abs=1e-7)
    assert fit.nll_after < fit.nll_before
    # Already calibrated (P = 0.75 and 3 of 4 right on each side): T = 1.
    assert fit_temperature(sigmoid([math.log(3)] * 4 + [-math.log(3)] * 4), y).temperature == pytest.approx(1.0,
                                                                                                          rel=1e-6)


def test_a_perfectly_separated_side_holds_the_temperature_at_its_lower_bound():
    fit = fit_temperature(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 1, 0, 0]))
    assert fit.at_bound and fit.temperature == pytest.approx(0.05)


def test_calibrate_is_what_the_inference_path_gives_at_that_temperature():
    # A tiny network whose two logits differ per image; the TrainedModel divides them by its temperature.
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    with torch.no_grad():
        network[1].weight.mul_(3.0)  # logits a few units apart (within the +-16 of logit_scores)
    prep = {"image_size": 4, "color": "rgb", "mean": [0.5] * 3, "std": [0.25] * 3}
    model = TrainedModel(network, prep, ["hem", "all"], "toy", 1)
    images = np.random.default_rng(0).integers(0, 256, size=(6, 3, 4, 4), dtype=np.uint8)
    plain = probabilities(model, images)
    assert probabilities(replace(model, temperature=2.5), images) == pytest.approx(calibrate(plain, 2.5), abs=1e-6)
    assert calibrate(plain, 1.0) == pytest.approx(plain)


# ---------------------------------------------------------------- ECE, Brier, reliability

def test_ece_and_brier_of_four_cells():
    p, y = np.array([0.12, 0.18, 0.85, 0.95]), np.array([0, 1, 1, 1])
    # Bins [0.1, 0.2): 2 cells, mean P 0.15, half ALL; [0.8, 0.9): 0.85 vs 1; [0.9, 1.0]: 0.95 vs 1.
    assert expected_calibration_error(p, y) == pytest.approx(2 / 4 * 0.35 + 1 / 4 * 0.15 + 1 / 4 * 0.05)  # 0.225
    assert brier_score(p, y) == pytest.approx((0.12 ** 2 + 0.82 ** 2 + 0.15 ** 2 + 0.05 ** 2) / 4)  # 0.17795
    bins = reliability(p, y)
    assert [b["cells"] for b in bins] == [0, 2, 0, 0, 0, 0, 0, 0, 1, 1]
    assert bins[1]["mean_p_all"] == pytest.approx(0.15) and bins[1]["fraction_all"] == 0.5
    assert bins[9]["high"] == 1.0 and math.isnan(bins[0]["mean_p_all"])
    assert reliability(np.array([1.0]), np.array([1]))[9]["cells"] == 1  # P = 1 sits in the last bin


def test_reliability_figure_keeps_its_text_inside(monkeypatch):
    p, y = np.array([0.12, 0.18, 0.85, 0.95, 0.5, 0.55]), np.array([0, 1, 1, 1, 0, 1])
    figure = reliability_figure(reliability(p, y), reliability(calibrate(p, 1.7), y), 1.7,
                                "trial-7f3c2_00011: test side, calibrated on validation")
    assert texts_outside(figure, monkeypatch) == []


# ---------------------------------------------------------------- the threshold

# Six validation cells: ALL at 0.9, 0.6, 0.3; hem at 0.1, 0.4, 0.7.
SIX_P, SIX_Y = np.array([0.9, 0.6, 0.3, 0.1, 0.4, 0.7]), np.array([1, 1, 1, 0, 0, 0])


@pytest.mark.parametrize("target, threshold, sensitivity, specificity", [
    # sensitivity: the largest threshold keeping ceil(target x 3) ALL cells at or above it
    (("sensitivity", 0.95), 0.3, 1.0, 1 / 3),
    (("sensitivity", 0.6), 0.6, 2 / 3, 2 / 3),  # ceil(1.8) = 2 cells: 0.9 and 0.6
    (("sensitivity", 2 / 3), 0.6, 2 / 3, 2 / 3),  # exactly 2 of 3 (no rounding up to 3)
    (("sensitivity", 0.3), 0.9, 1 / 3, 1.0),
    # specificity: the smallest threshold above ceil(target x 3) hem cells
    (("specificity", 0.6), 0.4, 2 / 3, 2 / 3),  # just above 0.4: 0.1 and 0.4 are hem
    (("specificity", 1.0), 0.7, 1 / 3, 1.0),
    ((None, None), 0.5, 2 / 3, 2 / 3),  # no target: 0.5
])
def test_threshold_for_a_target_on_six_cells(target, threshold, sensitivity, specificity):
    name, value = target
    point = choose_threshold(SIX_P, SIX_Y, **({name: value} if name else {}))
    if name == "specificity":  # the next float above the hem cell's P(ALL): that cell is called hem
        assert point.threshold > threshold and point.threshold == pytest.approx(threshold, abs=1e-15)
    else:
        assert point.threshold == threshold
    assert (point.val_sensitivity, point.val_specificity) == pytest.approx((sensitivity, specificity))
    assert point.describe() == (f"{name} >= {value:g} on validation" if name else "default threshold 0.5")
    assert point.warning is None


def test_an_unmet_target_says_why_and_a_useless_one_warns():
    with pytest.raises(TargetUnmetError, match="sensitivity >= 0.9 cannot be met: the validation side has no ALL"):
        choose_threshold(SIX_P[3:], SIX_Y[3:], sensitivity=0.9)
    with pytest.raises(TargetUnmetError, match="no hem cells"):
        choose_threshold(SIX_P[:3], SIX_Y[:3], specificity=0.9)
    # Every hem cell above every ALL cell: sensitivity 1 only by calling everything ALL.
    point = choose_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0]), sensitivity=1.0)
    assert point.threshold == 0.1 and point.val_specificity == 0.0 and "every validation cell ALL" in point.warning
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        choose_threshold(SIX_P, SIX_Y, sensitivity=1.5)


def test_rates_at_a_threshold_with_the_patient_interval():
    # Four subjects of two cells: A and B are ALL, C and D hem. At 0.3: ALL 0.95, 0.5, 0.35 called (3 of 4),
    # hem 0.1 and 0.05 not (2 of 4).
    p = np.array([0.95, 0.5, 0.35, 0.2, 0.1, 0.32, 0.05, 0.7])
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    subjects = np.array(["A", "A", "B", "B", "C", "C", "D", "D"])
    rates = rates_with_intervals(y, p, subjects, 0.3, resamples=400)
    assert rates["sensitivity"] == 0.75 and rates["specificity"] == 0.5
    for name in ("sensitivity", "specificity"):
        assert rates[f"{name}_ci95_low"] <= rates[name] <= rates[f"{name}_ci95_high"]
    # Resampling patients: A (2 of 2) or B (1 of 2) twice gives 1.0 or 0.5 at the extremes.
    assert (rates["sensitivity_ci95_low"], rates["sensitivity_ci95_high"]) == (0.5, 1.0)


def test_stored_decision_from_version_tags_and_its_line():
    tags = {"leukotune.temperature": "1.43", "leukotune.threshold": "0.31",
            "leukotune.operating_point": "sensitivity >= 0.95 on validation", "leukotune.calibration": "validation"}
    decision = StoredDecision.from_tags(tags, missing="unused")
    assert (decision.temperature, decision.threshold, decision.calibrated) == (1.43, 0.31, True)
    assert decision.line() == ("P(ALL) calibrated with temperature 1.43 (fitted on validation); called ALL at "
                               "P(ALL) >= 0.31 (sensitivity >= 0.95 on validation)")
    old = StoredDecision.from_tags({}, missing="version 3 was promoted before calibration existed")
    assert (old.temperature, old.threshold, old.calibrated) == (1.0, 0.5, False)
    assert "uncalibrated, as trained (version 3 was promoted before calibration existed)" in old.line()
    with pytest.raises(ValueError):
        StoredDecision.from_tags({"leukotune.temperature": "0", "leukotune.threshold": "0.5"}, missing="")


# ---------------------------------------------------------------- a cross-validated trial's validation cells

def test_a_cross_validated_ensemble_is_calibrated_on_out_of_fold_cells():
    """Each fold's cells are scored by the fold model that never trained on them, not by the ensemble."""
    ensemble = FoldEnsemble([_Constant(1.0), _Constant(-2.0)]).eval()
    prep = {"image_size": 2, "color": "gray", "mean": [0.5], "std": [0.25]}
    model = TrainedModel(ensemble, prep, ["hem", "all"], "toy", 1)
    images = np.zeros((6, 1, 2, 2), dtype=np.uint8)
    folds = [np.array([0, 2]), np.array([1, 3])]
    data = PreparedData(images, np.array([1, 0, 1, 0, 1, 0]), np.array(list("ABCDEF")), np.array([1, 3]),
                        np.array([0, 2]), [], "fp", {}, test_idx=np.array([4, 5]), folds=folds)
    indices, prob, fitted_on = validation_scores(model, data)
    assert indices.tolist() == [0, 2, 1, 3] and fitted_on == OUT_OF_FOLD
    assert prob == pytest.approx([sigmoid(1.0)] * 2 + [sigmoid(-2.0)] * 2, abs=1e-6)


class _Constant(nn.Module):
    """A fold model that gives every image the same logits (hem 0, ALL `logit_all`)."""

    def __init__(self, logit_all: float) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([0.0, logit_all]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), 2)


# ---------------------------------------------------------------- promote and predict, real MLflow

EXPERIMENT = "calibration"
TEMPERATURE = 2.0
# Calibrated P(ALL) of the validation cells (stored as trained, at T = 1), and of the test cells by subject.
VAL_ALL, VAL_HEM = [0.9, 0.8, 0.7, 0.6, 0.3], [0.1, 0.2, 0.4, 0.65]
TEST = {"A": ([0.95, 0.5], 1), "B": ([0.35, 0.2], 1), "C": ([0.1, 0.32], 0), "D": ([0.05, 0.7], 0)}


def _cell_scores(val_all: list[float], val_hem: list[float]) -> dict:
    test_p = [p for ps, _ in TEST.values() for p in ps]
    return {"temperature": TEMPERATURE, "temperature_at_bound": False, "fitted_on": "validation",
            "validation": {"p_all": as_trained(val_all + val_hem, TEMPERATURE),
                           "labels": [1] * len(val_all) + [0] * len(val_hem)},
            "test": {"p_all": as_trained(test_p, TEMPERATURE),
                     "labels": [label for ps, label in TEST.values() for _ in ps],
                     "subjects": [s for s, (ps, _) in TEST.items() for _ in ps]}}


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> dict:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    tracker = Tracker(uri, EXPERIMENT, log=lambda _msg: None)
    parent = tracker.create_run("study", {TAG_KIND: "study", TAG_FINGERPRINT: "fp-calibration"})
    best = _log_trial(tracker, parent, "trial-calibrated", [0.7, 0.9], 1_700_000_000_000, seed=1)
    tracker.log_text(best, json.dumps(_cell_scores(VAL_ALL, VAL_HEM)), CELL_SCORES_FILE)
    tracker.log_metrics(best, {"calibration_temperature": TEMPERATURE, "test_ece": 0.2, "test_ece_calibrated": 0.1,
                               "test_brier": 0.3, "test_brier_calibrated": 0.25}, step=0)
    tracker.end_run(parent, "FINISHED")
    return {"uri": uri, "tracker": tracker, "best": best, "client": MlflowClient(tracking_uri=uri, registry_uri=uri)}


def _promote(registry, *extra: str, experiment: str = EXPERIMENT) -> int:
    return main(["promote", "--experiment", experiment, "--tracking-uri", registry["uri"], *extra])


def test_promote_with_a_sensitivity_target_stores_threshold_and_temperature(registry, capsys):
    assert _promote(registry, "--model-name", "op", "--sensitivity", "0.9") == 0
    out = capsys.readouterr().out
    # ceil(0.9 x 5) = 5 ALL cells: the threshold is the lowest, 0.3; hem 0.1 and 0.2 fall below it (2 of 4).
    assert "P(ALL) calibrated with temperature 2.000 (fitted on validation)" in out
    assert ("operating point: ALL at P(ALL) >= 0.3000 (sensitivity >= 0.9 on validation; there sensitivity "
            "1.0000, specificity 0.5000)") in out
    assert "at that threshold on test: sensitivity 0.7500 (95% CI by patient" in out
    version = registry["client"].get_model_version_by_alias("op", "champion")
    tags = version.tags
    assert float(tags["leukotune.temperature"]) == TEMPERATURE
    assert float(tags["leukotune.threshold"]) == pytest.approx(0.3, abs=1e-12)
    assert tags["leukotune.operating_point"] == "sensitivity >= 0.9 on validation"
    assert tags["leukotune.calibration"] == "validation"
    assert float(tags["operating_point.val_specificity"]) == 0.5
    assert float(tags["operating_point.test_sensitivity"]) == 0.75  # A: 0.95, 0.5; B: 0.35 (not 0.2)
    assert float(tags["operating_point.test_specificity"]) == 0.5  # C: 0.1; D: 0.05 (not 0.32, 0.7)
    assert tags["test.ece_calibrated"] == "0.1"
    card = version.description
    assert "## Calibration and operating point" in card and "divided by 2.0000" in card
    assert "calibrated P(ALL) >= 0.3000 (sensitivity >= 0.9 on validation" in card


def test_predict_gives_calibrated_p_and_decides_at_the_stored_threshold(registry, synthetic_dataset, capsys):
    assert _promote(registry, "--model-name", "op-predict", "--sensitivity", "0.9") == 0
    capsys.readouterr()
    files = sorted((synthetic_dataset / "training_data").rglob("*.bmp"))[:8]
    assert main(["predict", "--model", "models:/op-predict@champion", *map(str, files), "--json",
                 "--tracking-uri", registry["uri"]]) == 0
    captured = capsys.readouterr()
    assert ("P(ALL) calibrated with temperature 2 (fitted on validation); called ALL at P(ALL) >= 0.3 "
            "(sensitivity >= 0.9 on validation)") in captured.err
    answer = json.loads(captured.out)
    assert answer["calibration"]["calibrated"] and answer["calibration"]["temperature"] == TEMPERATURE
    threshold = answer["calibration"]["threshold"]
    rows = answer["predictions"]
    assert all((r["class"] == "all") == (r["p_all"] >= threshold) for r in rows)
    # The same network as trained (its logged model, not a registered version: uncalibrated, 0.5), calibrated by
    # hand, gives the same P(ALL).
    logged = registry["client"].get_run(registry["best"]).data.tags[TAG_MODEL_URI]
    assert main(["predict", "--model", logged, *map(str, files), "--json", "--tracking-uri", registry["uri"]]) == 0
    captured = capsys.readouterr()
    assert "uncalibrated, as trained (not a registered version" in captured.err
    plain = json.loads(captured.out)
    assert plain["calibration"]["threshold"] == 0.5
    raw = np.array([r["p_all"] for r in plain["predictions"]])
    assert [r["p_all"] for r in rows] == pytest.approx(calibrate(raw, TEMPERATURE), abs=1e-5)
    model = load_model("models:/op-predict@champion", registry["uri"])  # what `evaluate` gets too
    assert (model.temperature, model.threshold) == (TEMPERATURE, threshold)


def test_the_champion_loaded_as_a_pyfunc_answers_as_predict(registry, synthetic_dataset, capsys):
    """What `mlflow models serve` and `leukotune serve` load: the registered model carries the version's temperature
    and threshold, so it gives predict's calibrated P(ALL) and calls; its lineage names the trial's own model."""
    assert _promote(registry, "--model-name", "op-served", "--sensitivity", "0.9", "--json") == 0
    promoted = json.loads(capsys.readouterr().out)
    client = registry["client"]
    version = client.get_model_version_by_alias("op-served", "champion")
    trained = client.get_run(registry["best"]).data.tags[TAG_MODEL_URI]
    assert version.run_id == registry["best"] and version.tags["leukotune.trained_model"] == trained
    assert version.source == promoted["source"] != trained and promoted["trained_model"] == trained
    copy = client.get_logged_model(version.source.removeprefix("models:/"))
    assert copy.source_run_id == registry["best"] and copy.tags[TAG_COPIED_FROM] == trained.removeprefix("models:/")
    assert "is a copy of the trial's `" + trained in version.description
    files = sorted((synthetic_dataset / "training_data").rglob("*.bmp"))[:8]
    assert main(["predict", "--model", "models:/op-served@champion", *map(str, files), "--json",
                 "--tracking-uri", registry["uri"]]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    with process_tracking_uri(registry["uri"]):
        served = mlflow.pyfunc.load_model("models:/op-served@champion").predict(
            pd.DataFrame({"image": [p.read_bytes() for p in files]}))
    assert list(served["call"]) == [r["class"] for r in rows]
    assert list(served["p_all"]) == pytest.approx([r["p_all"] for r in rows], abs=2e-6)  # predict prints 6 places
    assert len({r["class"] for r in rows}) == 2 or len({round(r["p_all"], 3) for r in rows}) > 1


def test_a_second_promote_moves_the_operating_point_only_when_given_a_target(registry, capsys):
    assert _promote(registry, "--model-name", "op-move", "--sensitivity", "0.9") == 0
    capsys.readouterr()
    # ceil(0.75 x 4) = 3 hem cells (0.1, 0.2, 0.4) below: just above 0.4; ALL 0.9, 0.8, 0.7, 0.6 stay (4 of 5).
    assert _promote(registry, "--model-name", "op-move", "--specificity", "0.75", "--json") == 0
    moved = json.loads(capsys.readouterr().out)
    # A registered model is never rewritten: the new point is a new version, the old one keeps its own.
    assert moved["created"] is True and moved["version"] == "2"
    assert moved["previous_operating_point"] == "sensitivity >= 0.9 on validation"
    assert moved["operating_point"]["threshold"] == pytest.approx(0.4, abs=1e-12)
    assert moved["operating_point"]["val_sensitivity"] == 0.8
    client = registry["client"]
    version = client.get_model_version_by_alias("op-move", "champion")
    tags = version.tags
    assert str(version.version) == "2" and tags["leukotune.operating_point"] == "specificity >= 0.75 on validation"
    first = client.get_model_version("op-move", "1")
    assert first.tags["leukotune.operating_point"] == "sensitivity >= 0.9 on validation"
    assert first.source != version.source and first.run_id == version.run_id
    assert _promote(registry, "--model-name", "op-move") == 0
    out = capsys.readouterr().out
    assert "operating point unchanged: ALL at P(ALL) >= 0.4" in out and "(specificity >= 0.75 on validation)" in out
    assert client.get_model_version_by_alias("op-move", "champion").tags == tags
    assert _promote(registry, "--model-name", "op-move", "--specificity", "0.75") == 0  # the point it has: reused
    assert "already registered as version 2" in capsys.readouterr().out
    assert len(client.search_model_versions("name = 'op-move'")) == 2


def test_an_unmet_target_or_a_run_without_scores_is_refused_and_registers_nothing(registry, capsys):
    tracker = Tracker(registry["uri"], "calibration-unmet", log=lambda _msg: None)
    parent = tracker.create_run("study", {TAG_KIND: "study"})
    run = _log_trial(tracker, parent, "trial-no-all", [0.8], 1_700_000_000_000, seed=2)
    tracker.log_text(run, json.dumps(_cell_scores([], VAL_HEM)), CELL_SCORES_FILE)
    assert _promote(registry, "--model-name", "unmet", "--sensitivity", "0.9", experiment="calibration-unmet") == 1
    assert "sensitivity >= 0.9 cannot be met: the validation side has no ALL cells" in capsys.readouterr().err
    tracker = Tracker(registry["uri"], "calibration-none", log=lambda _msg: None)
    parent = tracker.create_run("study", {TAG_KIND: "study"})
    _log_trial(tracker, parent, "trial-old", [0.8], 1_700_000_000_000, seed=3)
    assert _promote(registry, "--model-name", "unscored", "--specificity", "0.9",
                    experiment="calibration-none") == 1
    assert "has no validation scores (calibration/cell_scores.json)" in capsys.readouterr().err
    client = registry["client"]
    assert client.search_registered_models("name = 'unmet'") == []
    assert client.search_registered_models("name = 'unscored'") == []
    # Without a target the older run is still promoted, uncalibrated at 0.5.
    assert _promote(registry, "--model-name", "unscored", experiment="calibration-none") == 0
    assert "P(ALL) uncalibrated (temperature 1.0" in capsys.readouterr().out
    tags = client.get_model_version_by_alias("unscored", "champion").tags
    assert (tags["leukotune.temperature"], tags["leukotune.threshold"]) == ("1.0", "0.5")


@pytest.mark.parametrize("extra", [["--sensitivity", "1.5"], ["--sensitivity", "0"],
                                   ["--sensitivity", "0.9", "--specificity", "0.9"]])
def test_promote_refuses_a_bad_target_before_anything(extra, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["promote", "--experiment", "x", *extra])
    assert exit_info.value.code == 2


# ---------------------------------------------------------------- the smoke study, end to end

@pytest.mark.slow
def test_smoke_study_calibrates_its_top_trials_then_promote_and_predict_use_it(shared_study, capsys):
    """The session's shared smoke study: its tested trials carry the calibration, promote --sensitivity 0.9 stores
    threshold and temperature, predict prints the calibrated line and decides at that threshold."""
    uri = shared_study.uri
    assert "calibration: temperature " in shared_study.stdout + shared_study.stderr
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(SHARED_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    tested = [r for r in runs if "test_ece" in r.data.metrics]
    assert tested
    for run in tested:
        metrics = run.data.metrics
        assert metrics["calibration_temperature"] > 0
        for name in ("test_ece", "test_ece_calibrated", "test_brier", "test_brier_calibrated"):
            assert 0.0 <= metrics[name] <= 1.0, name
        if run.data.tags.get("leukotune.kind") == "trial":
            artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
            assert "plots/reliability.png" in artifacts
    assert main(["promote", "--experiment", SHARED_EXPERIMENT, "--tracking-uri", uri, "--model-name",
                 "smoke-calibrated", "--sensitivity", "0.9"]) == 0
    capsys.readouterr()
    version = client.get_model_version_by_alias("smoke-calibrated", "champion")
    tags = version.tags
    temperature, threshold = float(tags["leukotune.temperature"]), float(tags["leukotune.threshold"])
    assert tags["leukotune.operating_point"] == "sensitivity >= 0.9 on validation"
    assert float(tags["operating_point.val_sensitivity"]) >= 0.9
    run_metrics = client.get_run(version.run_id).data.metrics
    assert temperature == pytest.approx(run_metrics["calibration_temperature"])
    cells = Path(client.download_artifacts(version.run_id, CELL_SCORES_FILE, str(shared_study.workdir / "dl")))
    scores = json.loads(cells.read_text())
    assert len(scores["test"]["p_all"]) == run_metrics["test_cells"]
    images = sorted((shared_study.workdir / "cache").rglob("*.bmp"))[:6]
    assert images
    assert main(["predict", "--model", "models:/smoke-calibrated@champion", *map(str, images), "--json",
                 "--tracking-uri", uri]) == 0
    captured = capsys.readouterr()
    assert f"P(ALL) calibrated with temperature {temperature:.3g}" in captured.err
    assert "(sensitivity >= 0.9 on validation)" in captured.err
    rows = json.loads(captured.out)["predictions"]
    assert all((r["class"] == "all") == (r["p_all"] >= threshold) for r in rows)
    stored = json.loads(captured.out)["calibration"]
    assert stored["threshold"] == threshold and stored["temperature"] == temperature
