"""The one training loop, run locally (LocalSession) and through Ray Train (`leukotune train`)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from leukotune.tuner.config import load_study
from leukotune.tuner.train.checkpoints import (
    BEST_FILE,
    STATE_FILE,
    CheckpointError,
    read_checkpoint_file,
    write_checkpoint,
)
from leukotune.tuner.train.data_source import prepare_study_data
from leukotune.tuner.train.loop import run_training
from leukotune.tuner.train.sessions import LocalSession

from conftest import SMOKE, run_leukotune


@pytest.fixture
def tiny_study(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKOTUNE_CACHE_DIR", str(tmp_path / "cache"))

    def make(*overrides: str):
        return load_study(SMOKE, ["data.synthetic.subjects=8", "data.synthetic.cells_per_subject=10",
                                  "train.epochs=2", "train.batch_size=16", *overrides])
    return make


def test_loop_reports_every_epoch_with_all_metrics_and_a_checkpoint(tiny_study, tmp_path):
    session = LocalSession(use_gpu="false", keep_dir=tmp_path / "ckpt")
    last = run_training(tiny_study(), session, log=lambda _m: None)
    assert [r["epoch"] for r in session.reports] == [1, 2]
    for key in ("val_accuracy", "val_balanced_accuracy", "val_roc_auc", "val_f1_weighted", "val_f1_macro",
                "val_precision_all", "val_recall_hem", "val_cm_true_all_pred_hem", "train_loss"):
        assert key in last
    cells = sum(last[f"val_cm_true_{t}_pred_{p}"] for t in ("hem", "all") for p in ("hem", "all"))
    assert cells == last["val_samples"]
    best = read_checkpoint_file(tmp_path / "ckpt" / "epoch_0002", BEST_FILE)
    assert best["model_name"] == "cnn" and best["config"]["train"]["epochs"] == 2
    assert best["preprocessing"]["image_size"] == 64 and len(best["preprocessing"]["mean"]) == 3


def test_resume_continues_after_the_checkpointed_epoch(tiny_study, tmp_path):
    first = LocalSession(use_gpu="false", keep_dir=tmp_path / "ckpt")
    run_training(tiny_study("train.epochs=1"), first, log=lambda _m: None)
    resumed = LocalSession(use_gpu="false", resume_from=tmp_path / "ckpt" / "epoch_0001")
    run_training(tiny_study("train.epochs=3"), resumed, log=lambda _m: None)
    assert [r["epoch"] for r in resumed.reports] == [2, 3]


def test_truncated_checkpoint_is_detected_and_never_loaded(tiny_study, tmp_path):
    directory = tmp_path / "bad"
    write_checkpoint(directory, {"epoch": 1, "model": {"w": torch.ones(3)}}, None)
    data = (directory / STATE_FILE).read_bytes()
    (directory / STATE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="checksum"):
        read_checkpoint_file(directory, STATE_FILE)
    messages = []
    session = LocalSession(use_gpu="false", resume_from=directory)
    run_training(tiny_study("train.epochs=1"), session, log=messages.append)
    assert any("ignoring checkpoint" in m for m in messages)
    assert [r["epoch"] for r in session.reports] == [1]  # restarted from scratch, not from garbage


@pytest.mark.parametrize("model", ["mobilenet_v2", "resnet50"])
def test_transfer_models_train_frozen(tiny_study, model):
    session = LocalSession(use_gpu="false")
    # Six subjects (two hem) leave none of a class for a test side: this test is about training only.
    last = run_training(tiny_study(f"train.model={model}", "train.epochs=1", "data.synthetic.subjects=6",
                                   "data.test_fraction=0"), session, log=lambda _m: None)
    assert 0.0 <= last["val_accuracy"] <= 1.0


def test_cnn_trains_on_the_real_sample(cnmc_sample, tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    study = load_study(SMOKE, ["train.epochs=1", "train.batch_size=8", "data.val_fraction=0.3"],
                       data_path=str(cnmc_sample))
    session = LocalSession(use_gpu="false")
    last = run_training(study, session, log=lambda _m: None)
    held_out = len(prepare_study_data(study).test_idx)  # the test side (whole subjects) never trains
    assert held_out > 0 and last["train_samples"] + last["val_samples"] + held_out == 60


@pytest.mark.slow
def test_leukotune_train_runs_through_ray_train(tmp_path, env):
    result = run_leukotune(
        ["train", "--config", str(SMOKE), "--set", "train.epochs=2", "--set", "data.synthetic.subjects=8",
         "--set", "data.synthetic.cells_per_subject=10", "--set", f"storage_path={tmp_path / 'runs'}"],
        tmp_path, env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "final metrics" in result.stdout and "val_f1_weighted" in result.stdout
    checkpoint = Path(result.stdout.split("best epoch): ")[1].split()[0])
    assert (checkpoint / BEST_FILE).is_file()
    assert "epoch   2" in result.stdout + result.stderr  # per-epoch progress from the worker
