"""The model card's reporting checklist (issue 23, item 5): every number in the card traced to a record. First on a
registry small enough to compute by hand (four test patients of two cells each), then on the session's shared smoke
study, promoted with a sensitivity target and written again by `leukotune report`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from leukotune.tuner.cli.main import main
from leukotune.tuner.evaluation.calibration import CELL_SCORES_FILE, calibrate
from leukotune.tuner.registry.checklist import ITEMS, _disjointness, is_normal_subject
from leukotune.tuner.tracking.client import PARENT_TAG, TAG_FINGERPRINT, TAG_KIND, Tracker

from conftest import SHARED_EXPERIMENT, SHARED_TRIALS
from test_calibration import as_trained
from test_promote_predict import _log_trial

EXPERIMENT = "checklist"
TEMPERATURE = 2.0
# Calibrated P(ALL) of the validation cells (ALL, then hem): `--sensitivity 0.9` needs all 5 ALL cells, so the
# threshold is the lowest of them, 0.3.
VAL_ALL, VAL_HEM = [0.9, 0.8, 0.7, 0.6, 0.3], [0.1, 0.2, 0.4, 0.65]
# Calibrated P(ALL) of the test cells by subject (ALL patients 5, 6; normal donors H7, H8), in test-side order.
TEST = {"5": [0.95, 0.5], "6": [0.35, 0.2], "H7": [0.1, 0.32], "H8": [0.05, 0.7]}
SIDES = {"train": ["1", "2", "H1"], "val": ["3", "H2"], "test": list(TEST)}
COUNTS = {"train": (12, 6), "val": (5, 4), "test": (4, 4)}
CONFIG = {"data": {"split": "subject", "val_fraction": 0.25, "seed": 0, "test_fraction": 0.2, "cv_folds": 0},
          "train": {"model": "cnn", "epochs": 4, "image_size": 64, "color": "rgb", "batch_size": 16,
                    "augment": "rot90"},
          "tune": {"num_samples": 6, "max_concurrent": 2, "search": "optuna", "seed": 0, "scheduler": "asha",
                   "grace_period": 1, "reduction_factor": 2, "metric": "val_f1_weighted", "mode": "max",
                   "test_top_k": 3, "optuna": {"n_startup_trials": "auto", "multivariate": True,
                                               "constant_liar": "auto"}}}


def _cell_scores() -> dict:
    test_p = [p for ps in TEST.values() for p in ps]
    return {"temperature": TEMPERATURE, "temperature_at_bound": False, "fitted_on": "validation",
            "validation": {"p_all": as_trained(VAL_ALL + VAL_HEM, TEMPERATURE),
                           "labels": [1] * len(VAL_ALL) + [0] * len(VAL_HEM)},
            "test": {"p_all": as_trained(test_p, TEMPERATURE),
                     "labels": [0 if is_normal_subject(s) else 1 for s, ps in TEST.items() for _ in ps],
                     "subjects": [s for s, ps in TEST.items() for _ in ps]}}


def _log_study(tracker: Tracker) -> str:
    """The parent run as a study writes it: tags, params, the data and config records."""
    parent = tracker.create_run("study", {TAG_KIND: "study", TAG_FINGERPRINT: "fp-checklist",
                                          "leukotune.code_version": "0.1.0+abc1234"})
    tracker.log_json(parent, SIDES, "data/split.json")
    tracker.log_json(parent, {"root": "/data/cnmc", "cells": 35, "subjects": 9, "synthetic": False,
                              "skipped": [{"path": "/data/cnmc/x.bmp", "reason": "truncated"}], "folds": []},
                     "data/summary.json")
    tracker.log_json(parent, CONFIG, "config/resolved.json")
    tracker.log_json(parent, {"lr": {"loguniform": [0.0001, 0.01]}}, "config/search_space.json")
    counts = {f"data.{side}_{cls}_cells": n for side, pair in COUNTS.items() for cls, n in zip(("all", "hem"), pair)}
    tracker.log_params(parent, {**counts, "data.split_method": "subject", "data.test_source": "subjects"})
    tracker.log_metrics(parent, {"trials": 6, "selection_gap": 0.1}, step=0)
    return parent


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> dict:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    tracker = Tracker(uri, EXPERIMENT, log=lambda _msg: None)
    parent = _log_study(tracker)
    run = _log_trial(tracker, parent, "trial-card", [0.7, 0.9], 1_700_000_000_000, seed=1)
    tracker.log_text(run, json.dumps(_cell_scores()), CELL_SCORES_FILE)
    tracker.log_params(run, {"lr": 0.003})
    tracker.log_metrics(run, {"calibration_temperature": TEMPERATURE, "test_ece": 0.2, "test_ece_calibrated": 0.1,
                              "test_brier": 0.3, "test_brier_calibrated": 0.25}, step=0)
    tracker.set_tags(run, {"leukotune.undefined.test_precision_hem": "none of the 8 cells was called normal"})
    tracker.log_json(run, {"passed": False, "bound": 0.5, "median_rank_correlation": 0.83, "layers": ["features.1"],
                           "reason": "the maps hardly change", "cells": [{"index": 7}, {"index": 0}]},
                     "saliency/summary.json")
    tracker.log_text(run, "stand-in for the check's figure", "saliency/randomisation_check.png")
    tracker.end_run(parent, "FINISHED")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert main(["promote", "--experiment", EXPERIMENT, "--tracking-uri", uri, "--model-name", "card",
                 "--sensitivity", "0.9"]) == 0
    version = client.get_model_version_by_alias("card", "champion")
    card = Path(client.download_artifacts(run, "model_card.md", str(tmp_path_factory.mktemp("card")))).read_text()
    return {"uri": uri, "run": run, "client": client, "version": version, "card": card}


def test_the_card_names_the_data_its_partitions_and_the_flow_per_side(registry):
    card = registry["card"]
    for text in ("fingerprint `fp-checklist`", "the folder `/data/cnmc` in the C-NMC 2019 layout",
                 "35 usable cells of 9 subjects; 1 unreadable files left out",
                 "validation split `subject`, test side from `subjects`",
                 "validation subjects drawn per class (data.val_fraction 0.25, seed 0): whole patients",
                 "data.test_fraction 0.2 of each class's subjects",
                 "Disjoint at the patient level: yes, no subject has cells on two sides",
                 "Cross-validation: none (data.cv_folds 0)",
                 "- train: 12 ALL, 6 hem cells; 3 subjects, of which 2 ALL and 1 normal",
                 "- val: 5 ALL, 4 hem cells; 2 subjects, of which 1 ALL and 1 normal",
                 "- test: 4 ALL, 4 hem cells; 4 subjects (5, 6, H7, H8), of which 2 ALL and 2 normal"):
        assert text in card, text


def test_the_card_states_the_tuning_procedure_and_selection_rule(registry):
    card = registry["card"]
    for text in ("`lr` loguniform [0.0001, 0.01]. Fixed: `model` cnn, `image_size` 64, `color` rgb, `batch_size` 16, "
                 "`augment` rot90.", "tune.num_samples 6 trials (6 ran), at most train.epochs 4 epochs",
                 "2 at a time", "Optuna TPE (n_startup_trials auto, multivariate True",
                 "ASHA (grace period 1 epochs, reduction factor 2, at most 4 epochs)",
                 "best epoch by `val_f1_weighted` (max) on validation; the top tune.test_top_k 3 trials",
                 "registered the best by `best_val_f1_weighted`", "`lr` = 0.003", "selection gap of the study's "
                 "winner 0.1000"):
        assert text in card, text


def test_calibration_and_operating_point_come_from_the_version_tags(registry):
    card, tags = registry["card"], registry["version"].tags
    assert "divided by 2.0000, fitted (minimum negative log-likelihood) on validation" in card
    assert "0.2000 as trained, 0.1000 calibrated; Brier score 0.3000 -> 0.2500" in card
    # ceil(0.9 x 5) = 5 ALL cells called: the threshold is the lowest, 0.3; hem 0.1 and 0.2 below it (2 of 4).
    assert ("called ALL at calibrated P(ALL) >= 0.3000 (sensitivity >= 0.9 on validation: sensitivity 1.0000, "
            "specificity 0.5000 there)") in card
    # Test cells at 0.3: ALL 0.95, 0.5, 0.35 called (3 of 4); hem 0.1, 0.05 not (2 of 4).
    assert float(tags["operating_point.test_sensitivity"]) == 0.75
    assert "At that threshold on test: sensitivity 0.7500" in card and "specificity 0.5000 (95% CI" in card
    assert "| precision_hem | - | undefined (none of the 8 cells was called normal) | - |" in card


def test_patients_and_failures_at_the_threshold_by_hand(registry):
    card = registry["card"]
    # Mean calibrated P(ALL): 5 0.725 (ALL, called ALL), 6 0.275 (ALL, called hem), H7 0.21 (hem), H8 0.375 (called
    # ALL). One of two each way: Clopper-Pearson for 1 of 2 is 1 - sqrt(0.975) to sqrt(0.975).
    low, high = 1 - 0.975 ** 0.5, 0.975 ** 0.5
    assert f"patient sensitivity: 0.5000 (exact 95% CI {low:.4f} - {high:.4f}): 1 of 2 ALL subjects" in card
    assert f"patient specificity: 0.5000 (exact 95% CI {low:.4f} - {high:.4f}): 1 of 2 normal subjects" in card
    # Patient pairs (ALL above hem): 0.725 > 0.21, 0.725 > 0.375, 0.275 > 0.21, 0.275 < 0.375: 3 of 4.
    assert "patient ROC-AUC: 0.7500" in card
    # 6: 0.35 called ALL, 0.2 not; H8: 0.7 called ALL, 0.05 not.
    assert "| 6 | all | 2 | 0.2750 | 50% | hem (miss) |" in card
    assert "| H8 | hem | 2 | 0.3750 | 50% | all (miss) |" in card
    assert "Patients called wrong: 6 (all, score 0.2750), H8 (hem, score 0.3750)." in card
    # Wrong cells at 0.3: 6's 0.2 (ALL), H7's 0.32 and H8's 0.7 (hem); most wrong first: |0.2 - 1|, |0.7|, |0.32|.
    assert "Cells called wrong: 3 of 8 (1 ALL cells called normal, 2 normal cells called ALL)" in card
    rows = ["| 3 | 6 | ALL | 0.2000 | no |", "| 7 | H8 | normal | 0.7000 | yes |", "| 5 | H7 | normal | 0.3200 | no |"]
    assert card.index(rows[0]) < card.index(rows[1]) < card.index(rows[2])


def test_saliency_software_and_what_a_person_must_write(registry):
    card, run = registry["card"], registry["run"]
    assert "Check FAILED (median rank correlation 0.83, passes below 0.5" in card
    assert f"none is shown. The check's own figure is the evidence: `runs:/{run}/saliency/randomisation_check.png`" \
           in card
    assert "gradcam_cells.png" not in card
    # This run recorded no versions at study time: the card says where its versions come from.
    assert "NOT recorded by the study; these are the versions where this card was written" in card
    assert "leukotune code of the study: `0.1.0+abc1234`" in card
    to_write = [item for item, where in ITEMS if where is None]
    assert to_write and all(f"- [ ] {item}" in card for item in to_write)
    assert "Ethics approval" in card and "External validation" in card


def test_the_version_description_points_at_the_card_and_report_writes_it_again(registry, tmp_path, capsys):
    version, run = registry["version"], registry["run"]
    assert version.description.startswith("# card: ALL vs hem single-cell classifier")
    assert f"`runs:/{run}/model_card.md`" in version.description and "Registered as version 1 of `card`" in \
           version.description
    out = tmp_path / "card.md"
    assert main(["report", "--model", "models:/card@champion", "--tracking-uri", registry["uri"], "--out",
                 str(out)]) == 0
    assert out.read_text() == registry["card"]
    assert main(["report", "--model", "models:/card/1", "--tracking-uri", registry["uri"]]) == 0
    assert capsys.readouterr().out == registry["card"]
    assert main(["report", "--model", "runs:/abc/model", "--tracking-uri", registry["uri"]]) == 2
    assert "give a registered version" in capsys.readouterr().err


def test_the_card_reads_the_records_where_their_writers_put_them():
    from leukotune.tuner.registry import checklist
    from leukotune.tuner.tracking import saliency_figures
    from leukotune.tuner.tune import holdout

    assert checklist.PATIENTS_TABLE == holdout.PATIENTS_TABLE
    assert checklist.RUN_FILES["saliency"] == saliency_figures.SUMMARY_FILE
    assert checklist.SALIENCY_FIGURES == (saliency_figures.MAPS_FIGURE, saliency_figures.CHECK_FIGURE)


@pytest.mark.parametrize("sides, split, says", [
    ({"train": ["1"], "val": ["2"], "test": ["3"]}, "subject", "yes, no subject has cells on two sides"),
    ({"train": ["1", "2"], "val": ["2"], "test": ["3"]}, "image", "train and validation share 1 subjects"),
    ({"train": ["1", "3"], "val": ["2"], "test": ["3"]}, "subject", "NO: test subjects 3 also sit on train"),
    ({}, "subject", "not recorded"),
])
def test_disjointness_is_checked_on_the_split(sides, split, says):
    assert says in _disjointness(sides, split)


# ---------------------------------------------------------------- the shared smoke study

def _download(client: MlflowClient, run_id: str, path: str, folder: Path):
    return Path(client.download_artifacts(run_id, path, str(folder)))


@pytest.mark.slow
def test_smoke_study_card_traces_every_number_to_a_record(shared_study, tmp_path):
    uri = shared_study.uri
    assert main(["promote", "--experiment", SHARED_EXPERIMENT, "--tracking-uri", uri, "--model-name",
                 "smoke-checklist", "--sensitivity", "0.9"]) == 0
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias("smoke-checklist", "champion")
    run = client.get_run(version.run_id)
    parent = client.get_run(run.data.tags[PARENT_TAG])
    card = _download(client, run.info.run_id, "model_card.md", tmp_path / "card").read_text()
    assert main(["report", "--model", "models:/smoke-checklist@champion", "--tracking-uri", uri, "--out",
                 str(tmp_path / "report.md")]) == 0
    assert (tmp_path / "report.md").read_text() == card

    # Data and flow: the parent's fingerprint, params and data/split.json.
    sides = json.loads(_download(client, parent.info.run_id, "data/split.json", tmp_path / "p").read_text())
    assert f"fingerprint `{parent.data.tags[TAG_FINGERPRINT]}`" in card
    for side in ("train", "val", "test"):
        normal = sum(s.startswith("H") for s in sides[side])
        params = parent.data.params
        cells = f"{params[f'data.{side}_all_cells']} ALL, {params[f'data.{side}_hem_cells']} hem"
        assert f"- {side}: {cells} cells; {len(sides[side])} subjects" in card
        assert f"of which {len(sides[side]) - normal} ALL and {normal} normal" in card
    assert "yes, no subject has cells on two sides" in card

    # Tuning: the study's budget and scheduler (conftest: 3 trials, 2 epochs, FIFO).
    assert f"tune.num_samples {SHARED_TRIALS} trials ({SHARED_TRIALS} ran), at most train.epochs 2 epochs" in card
    assert "FIFO (every trial trains all its epochs)" in card

    # Calibration and operating point: the version's tags and the run's metrics.
    tags, metrics = version.tags, run.data.metrics
    temperature, threshold = float(tags["leukotune.temperature"]), float(tags["leukotune.threshold"])
    assert temperature == pytest.approx(metrics["calibration_temperature"])
    assert f"divided by {temperature:.4f}" in card
    assert f"{metrics['test_ece']:.4f} as trained, {metrics['test_ece_calibrated']:.4f} calibrated" in card
    assert f"calibrated P(ALL) >= {threshold:.4f} (sensitivity >= 0.9 on validation" in card
    assert f"At that threshold on test: sensitivity {float(tags['operating_point.test_sensitivity']):.4f}" in card

    # Patients at the version's threshold, by hand from the per-cell scores.
    cells = json.loads(_download(client, run.info.run_id, CELL_SCORES_FILE, tmp_path / "c").read_text())["test"]
    prob = calibrate(np.asarray(cells["p_all"]), temperature)
    subjects, labels = np.asarray(cells["subjects"]), np.asarray(cells["labels"])
    right = {1: 0, 0: 0}
    for subject in sorted(set(cells["subjects"])):
        score, truth = prob[subjects == subject].mean(), int(labels[subjects == subject][0])
        right[truth] += int((score >= threshold) == bool(truth))
    n_all = len({s for s in cells["subjects"] if not s.startswith("H")})
    assert f"{right[1]} of {n_all} ALL subjects called right" in card
    assert f"{right[0]} of {len(set(cells['subjects'])) - n_all} normal subjects called right" in card
    wrong = int(((prob >= threshold).astype(int) != labels).sum())
    assert f"Cells called wrong: {wrong} of {len(labels)}" in card

    # Saliency and software: the run's saliency/summary.json and its software tags.
    summary = json.loads(_download(client, run.info.run_id, "saliency/summary.json", tmp_path / "s").read_text())
    verdict = "PASSED" if summary["passed"] else "FAILED"
    assert f"Check {verdict} (median rank correlation {summary['median_rank_correlation']:.2f}" in card
    assert f"torch {run.data.tags['leukotune.software.torch']}" in card and "recorded at study time" in card
    assert "### Still to be filled in by a person" in card
