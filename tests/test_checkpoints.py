"""Checkpoints that keep up: a frozen backbone left out of state.pt (and resumed onto the same weights only),
best.pt whole and written only when the best epoch changes, the seconds they cost reported with each epoch."""
from __future__ import annotations

import io

import pytest
import torch

from leukotune.models import get_model
from leukotune.tuner.config import load_study
from leukotune.tuner.train.checkpoints import (
    BEST_FILE,
    STATE_FILE,
    CheckpointError,
    CheckpointFolder,
    frozen_digest,
    frozen_parameter_names,
    load_trainable_state,
    read_checkpoint_file,
    rebuild_model,
    trainable_state,
)
from leukotune.tuner.train.loop import run_training
from leukotune.tuner.train.sessions import LocalSession

from conftest import SMOKE


def saved_bytes(payload) -> int:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.tell()


def frozen_resnet(seed: int):
    torch.manual_seed(seed)
    return get_model("resnet50", image_size=64, weights=None)


def test_a_frozen_backbone_is_left_out_of_the_state_and_resumes_only_onto_the_same_weights():
    model = frozen_resnet(0)
    with torch.no_grad():
        model.head[-1].weight.add_(1.0)  # as if the head had trained
    digest = frozen_digest(model)
    state = {"model": trainable_state(model), "frozen_sha256": digest}
    frozen = frozen_parameter_names(model)
    assert frozen and not set(frozen) & set(state["model"])
    assert saved_bytes(state) < 0.05 * saved_bytes(model.state_dict())  # the head and buffers: about 1%

    rebuilt = frozen_resnet(0)  # a resumed trial builds the network from the same weights first
    load_trainable_state(rebuilt, state, frozen_digest(rebuilt))
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key

    other = frozen_resnet(1)  # other frozen weights: the head was trained on other features
    with pytest.raises(CheckpointError, match="frozen backbone differs"):
        load_trainable_state(other, state, frozen_digest(other))


def test_a_network_that_trains_whole_is_saved_whole():
    torch.manual_seed(0)
    model = get_model("cnn", conv_layers=2, kernel_size=3, base_filters=4, dense=8, dropout=0.0, image_size=64)
    assert frozen_digest(model) is None and trainable_state(model).keys() == model.state_dict().keys()


@pytest.fixture
def tiny_study(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKOTUNE_CACHE_DIR", str(tmp_path / "cache"))

    def make(*overrides: str):
        return load_study(SMOKE, ["data.synthetic.subjects=8", "data.synthetic.cells_per_subject=10",
                                  "train.batch_size=16", *overrides])
    return make


def test_best_is_written_only_when_it_improves_and_every_epoch_reports_it(tiny_study, tmp_path, monkeypatch):
    written: list[int] = []
    write_best = CheckpointFolder.write_best

    def counting(self, best):
        written.append(best["epoch"])
        write_best(self, best)

    monkeypatch.setattr(CheckpointFolder, "write_best", counting)
    session = LocalSession(use_gpu="false", keep_dir=tmp_path / "ckpt")
    run_training(tiny_study("train.epochs=4", "train.lr=0.003"), session, log=lambda _m: None)
    reports = session.reports
    assert written == [r["epoch"] for r in reports if r["best_epoch"] == r["epoch"]] and written[0] == 1
    for report in reports:
        folder = tmp_path / "ckpt" / f"epoch_{report['epoch']:04d}"
        best = read_checkpoint_file(folder, BEST_FILE)
        assert best["epoch"] == report["best_epoch"]  # the folder's best.pt is the best so far, whole
        assert rebuild_model(best).state_dict().keys() == best["model"].keys()
        assert read_checkpoint_file(folder, STATE_FILE)["epoch"] == report["epoch"]
        assert 0 < report["checkpoint_seconds"] < report["train_seconds"] + report["val_seconds"] + 5


def test_a_frozen_transfer_trial_resumes_from_its_partial_state(tiny_study, tmp_path):
    overrides = ["train.model=mobilenet_v2", "data.synthetic.subjects=6", "data.test_fraction=0"]
    first = LocalSession(use_gpu="false", keep_dir=tmp_path / "ckpt")
    run_training(tiny_study(*overrides, "train.epochs=1"), first, log=lambda _m: None)
    folder = tmp_path / "ckpt" / "epoch_0001"
    state, best = read_checkpoint_file(folder, STATE_FILE), read_checkpoint_file(folder, BEST_FILE)
    assert state["frozen_sha256"] and len(state["model"]) < len(best["model"])
    assert (folder / STATE_FILE).stat().st_size < 0.2 * (folder / BEST_FILE).stat().st_size
    rebuild_model(best)  # best.pt alone rebuilds the whole network (strict load, no weights file)
    lines: list[str] = []
    resumed = LocalSession(use_gpu="false", resume_from=folder)
    run_training(tiny_study(*overrides, "train.epochs=2"), resumed, log=lines.append)
    assert "resumed from checkpoint at epoch 1" in lines and [r["epoch"] for r in resumed.reports] == [2]
