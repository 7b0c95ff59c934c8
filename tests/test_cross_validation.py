"""Cross-validation inside a trial (`data.cv_folds`): patient folds, K fold models trained side by side and scored
by their mean, fold records in MLflow, and the ensemble of the fold models as the trial's model for the test side,
promote and predict."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMOKE, TINY, local_uri, require_cnmc_sample, run_leukotune, sets, study_runs

from leukotune.data import CellRecord, DatasetError, prepare_data, write_synthetic_dataset
from leukotune.data.splits import cross_validation_folds
from leukotune.models import FoldEnsemble, get_model, rebuild_network
from leukotune.tuner.config import ConfigError, build_study, load_study
from leukotune.tuner.tracking.parent_run import LEADERBOARD_TABLE
from leukotune.tuner.evaluation.inference import TrainedModel, probabilities
from leukotune.tuner.train.checkpoints import BEST_FILE, STATE_FILE, CheckpointError, read_checkpoint_file
from leukotune.tuner.train.folds import combine_fold_metrics
from leukotune.tuner.train.loop import run_training
from leukotune.tuner.train.sessions import LocalSession
from leukotune.tuner.tune.packing import worst_case


def _cohort(sizes: dict[str, int], folds: int = 1) -> list[CellRecord]:
    """Records for subjects named like C-NMC's ("H..." = hem), with the given number of cells each."""
    return [CellRecord(f"/d/{subject}_{cell}.bmp", 0 if subject.startswith("H") else 1, subject, str(n % folds))
            for n, (subject, cells) in enumerate(sizes.items()) for cell in range(cells)]


def _sizes(seed: int = 0) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    return ({str(i): int(rng.integers(5, 60)) for i in range(1, 19)}
            | {f"H{i}": int(rng.integers(5, 60)) for i in range(1, 10)})


# ---------------------------------------------------------------- folds

@pytest.mark.parametrize("folds", [2, 3, 5])
def test_patient_folds_cover_every_cell_once_keep_patients_whole_and_hold_both_classes(folds):
    records = _cohort(_sizes())
    indices = np.arange(len(records))
    sides = cross_validation_folds(records, indices, folds, "subject", seed=3)
    assert len(sides) == folds
    assert np.array_equal(np.sort(np.concatenate(sides)), indices)  # each cell validated exactly once
    owners = [{records[i].subject for i in side} for side in sides]
    assert all(a.isdisjoint(b) for n, a in enumerate(owners) for b in owners[n + 1:])  # a patient in one fold only
    largest = max(_sizes().values())
    for label in (0, 1):
        per_fold = [sum(records[i].label == label for i in side) for side in sides]
        assert min(per_fold) > 0  # stratified: every fold validates both classes
        assert max(per_fold) - min(per_fold) <= largest  # dealt to the emptiest fold: near equal in cells


def test_folds_are_seeded_and_leave_the_test_side_out():
    records = _cohort(_sizes())
    non_test = np.arange(0, len(records), 1)[np.array([r.subject not in {"1", "H1"} for r in records])]
    first = cross_validation_folds(records, non_test, 3, "subject", seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(first, cross_validation_folds(records, non_test, 3, "subject", 0)))
    assert not all(np.array_equal(a, b) for a, b in zip(first, cross_validation_folds(records, non_test, 3, "subject",
                                                                                      1)))
    assert {records[i].subject for side in first for i in side}.isdisjoint({"1", "H1"})


def test_too_few_patients_of_a_class_for_the_folds_is_refused_naming_the_class():
    records = _cohort({"1": 10, "2": 10, "3": 10, "H1": 10, "H2": 10})
    with pytest.raises(DatasetError, match=r"3-fold .* needs 3 hem subjects .* found 2.*data.cv_folds"):
        cross_validation_folds(records, np.arange(len(records)), 3, "subject")


def test_fold_split_cross_validates_over_cnmc_folds_and_checks_their_number():
    records = _cohort(_sizes(), folds=3)
    sides = cross_validation_folds(records, np.arange(len(records)), 3, "fold")
    assert [{records[i].fold for i in side} for side in sides] == [{"0"}, {"1"}, {"2"}]
    with pytest.raises(DatasetError, match="set data.cv_folds=3"):
        cross_validation_folds(records, np.arange(len(records)), 2, "fold")


def test_image_folds_deal_each_class_round_the_folds():
    records = _cohort(_sizes())
    sides = cross_validation_folds(records, np.arange(len(records)), 4, "image", seed=0)
    for label in (0, 1):
        per_fold = [sum(records[i].label == label for i in side) for side in sides]
        assert max(per_fold) - min(per_fold) <= 1


def test_prepared_data_with_folds_reads_as_fold_zero_and_gives_every_fold_its_sides(tmp_path):
    root = tmp_path / "cells"
    write_synthetic_dataset(root, subjects=12, cells_per_subject=3, seed=0, size=64)
    data = prepare_data(root, size=64, color="rgb", test_fraction=0.2, cv_folds=3, cache_dir=tmp_path / "cache")
    sides = data.fold_sides()
    assert len(sides) == 3 and np.array_equal(sides[0][1], data.val_idx) and np.array_equal(sides[0][0],
                                                                                               data.train_idx)
    non_test = np.setdiff1d(np.arange(len(data.labels)), data.test_idx)
    for train, val in sides:
        assert np.array_equal(np.union1d(train, val), non_test) and np.intersect1d(train, val).size == 0
        assert set(data.subjects[train]).isdisjoint(set(data.subjects[val]))


def test_one_fold_and_folds_under_ddp_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^data.cv_folds=1 is not allowed: use 0 for one"):
        build_study({"data": {"cv_folds": 1}})
    with pytest.raises(ConfigError, match=r"^data.cv_folds=3 trains the fold models in one process; use "
                                          r"resources.workers=1"):
        build_study({"data": {"cv_folds": 3}, "resources": {"workers": 2}})


# ---------------------------------------------------------------- one report from K folds

def test_fold_metrics_combine_into_mean_spread_per_fold_keys_and_pooled_counts():
    folds = [{"val_f1_weighted": 0.6, "train_loss": 0.5, "val_cm_true_all_pred_all": 10.0, "train_seconds": 2.0,
              "val_seconds": 1.0, "train_samples_per_second": 50.0},
             {"val_f1_weighted": 0.8, "train_loss": 0.3, "val_cm_true_all_pred_all": 7.0, "train_seconds": 3.0,
              "val_seconds": 1.0, "train_samples_per_second": 100.0}]
    combined = combine_fold_metrics(folds)
    assert combined["val_f1_weighted"] == pytest.approx(0.7)
    assert combined["val_f1_weighted_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert (combined["fold0_val_f1_weighted"], combined["fold1_val_f1_weighted"]) == (0.6, 0.8)
    assert combined["train_loss"] == pytest.approx(0.4) and combined["fold1_train_loss"] == 0.3
    assert combined["val_cm_true_all_pred_all"] == 17.0  # every cell validated once: the pooled matrix
    assert combined["train_seconds"] == 5.0 and combined["train_samples_per_second"] == pytest.approx(400 / 5)
    assert not any(key.startswith("fold") and "seconds" in key for key in combined)
    assert combine_fold_metrics(folds[:1]) == folds[0]  # one split: the report as it always was


def test_the_ensemble_outputs_log_mean_probabilities_and_rebuilds_from_its_state():
    torch.manual_seed(0)
    kwargs = {"conv_layers": 2, "kernel_size": 3, "base_filters": 4, "dense": 8, "dropout": 0.0, "image_size": 64}
    members = [get_model("cnn", **kwargs).eval() for _ in range(3)]
    ensemble = FoldEnsemble(members).eval()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(m(images), dim=1) for m in members]).mean(dim=0)
        assert torch.allclose(torch.softmax(ensemble(images), dim=1), expected, atol=1e-6)
        rebuilt = rebuild_network("cnn", kwargs, ensemble.state_dict(), ensemble_members=3)
        assert torch.allclose(rebuilt(images), ensemble(images))


# ---------------------------------------------------------------- the loop

@pytest.fixture
def cv_study(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKOTUNE_CACHE_DIR", str(tmp_path / "cache"))

    def make(*overrides: str):
        return load_study(SMOKE, ["data.synthetic.subjects=12", "data.synthetic.cells_per_subject=6",
                                  "train.batch_size=16", "train.image_size=64", "data.cv_folds=2", *overrides])
    return make


def test_a_cross_validated_trial_reports_fold_means_and_saves_the_ensemble_at_the_best_mean(cv_study, tmp_path):
    session = LocalSession(use_gpu="false", keep_dir=tmp_path / "ckpt")
    run_training(cv_study("train.epochs=2", "train.lr=0.003"), session, log=lambda _m: None)
    last = session.reports[-1]
    assert last["cv_folds"] == 2
    folds = [last["fold0_val_f1_weighted"], last["fold1_val_f1_weighted"]]
    assert last["val_f1_weighted"] == pytest.approx(np.mean(folds))
    assert last["val_f1_weighted_std"] == pytest.approx(np.std(folds, ddof=1))
    best_report = session.reports[last["best_epoch"] - 1]
    assert last["best_val_f1_weighted"] == best_report["val_f1_weighted"]
    assert last["best_val_f1_weighted_std"] == best_report["val_f1_weighted_std"]
    folder = tmp_path / "ckpt" / f"epoch_{last['epoch']:04d}"
    best = read_checkpoint_file(folder, BEST_FILE)
    assert best["ensemble_members"] == 2 and best["epoch"] == last["best_epoch"]
    model = TrainedModel.from_checkpoint(best)
    assert isinstance(model.network, FoldEnsemble) and len(model.network.members) == 2
    data = np.random.default_rng(0).integers(0, 255, size=(5, 3, 64, 64), dtype=np.uint8)
    ensemble = probabilities(model, data)
    singles = [probabilities(TrainedModel(member, model.preprocessing, model.class_names, "cnn", None), data)
               for member in model.network.members]
    assert np.allclose(ensemble, np.mean(singles, axis=0), atol=1e-5)  # the trial's model: the folds averaged
    assert len(read_checkpoint_file(folder, STATE_FILE)["members"]) == 2


def test_a_cross_validated_trial_resumes_every_fold_and_refuses_another_fold_count(cv_study, tmp_path):
    run_training(cv_study("train.epochs=1"), LocalSession(use_gpu="false", keep_dir=tmp_path / "ckpt"),
                 log=lambda _m: None)
    folder = tmp_path / "ckpt" / "epoch_0001"
    lines: list[str] = []
    resumed = LocalSession(use_gpu="false", resume_from=folder)
    run_training(cv_study("train.epochs=2"), resumed, log=lines.append)
    assert "resumed from checkpoint at epoch 1" in lines and [r["epoch"] for r in resumed.reports] == [2]
    with pytest.raises(CheckpointError, match="holds 2 fold model.* trains 3"):
        run_training(cv_study("train.epochs=2", "data.cv_folds=3"), LocalSession(use_gpu="false", resume_from=folder),
                     log=lambda _m: None)


def test_packing_counts_every_fold_model_and_its_resident_cells(cv_study):
    single = cv_study("data.cv_folds=0")
    three = cv_study("data.cv_folds=3")
    _, one = worst_case(single, {}, split_images=100)
    _, many = worst_case(three, {}, split_images=100)
    assert many.weights == 3 * one.weights and many.gradients_and_optimizer == 3 * one.gradients_and_optimizer
    assert many.activations == one.activations and many.data == 3 * one.data


# ---------------------------------------------------------------- a cross-validated study, end to end

@pytest.mark.slow
def test_cross_validated_study_records_folds_and_its_ensemble_is_promoted_and_predicts(tmp_path, env):
    experiment = "cv-smoke"
    result = run_leukotune(["tune", "--config", str(SMOKE), *sets(TINY + [
        "data.synthetic.subjects=12", "data.cv_folds=2", "tune.num_samples=2", "train.epochs=2",
        "tracking.log_models=1", f"tracking.experiment={experiment}"])], tmp_path, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2-fold cross-validation" in result.stdout and "2x the compute of one split" in result.stdout
    assert " ± " in result.stdout  # epoch lines and the leaderboard give the spread over the folds
    client, parents, children = study_runs(local_uri(tmp_path), experiment)
    assert len(children) == 2
    for child in children:
        metrics = child.data.metrics
        assert metrics["cv_folds"] == 2
        assert metrics["val_f1_weighted"] == pytest.approx(
            (metrics["fold0_val_f1_weighted"] + metrics["fold1_val_f1_weighted"]) / 2)
        epochs = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_f1_weighted"))
        assert epochs and sorted(m.step for m in client.get_metric_history(
            child.info.run_id, "fold1_val_f1_weighted")) == epochs  # each fold's curve, epoch by epoch
    table = Path(client.download_artifacts(parents[0].info.run_id, LEADERBOARD_TABLE, str(tmp_path)))
    assert "best_val_f1_weighted_std" in json.loads(table.read_text())["columns"]  # mean and spread, side by side

    promoted = run_leukotune(["promote", "--experiment", experiment], tmp_path, env)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    cells = require_cnmc_sample() / "training_data" / "fold_0" / "all"
    predicted = run_leukotune(["predict", "--model", f"models:/leukotune-{experiment}@champion", "--json",
                               str(cells)], tmp_path, env)
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    answers = json.loads(predicted.stdout)
    assert answers  # the ensemble, fetched from MLflow and rebuilt, classified the real cells
