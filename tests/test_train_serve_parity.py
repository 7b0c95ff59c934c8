"""Training and serving feed a model the same cells. A tiny model trained by the one loop; then its validation cells
through (a) the loop's own validation pass, over either input pipeline, and (b) `leukotune predict` on the model as
the study logs it to MLflow, rebuilt through the one inference path from the image files: the same P(ALL) for
every cell. Any drift between training's and serving's preprocessing (normalisation, size, colour, channel order,
orientation) fails it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from leukotune.tuner.cli.main import main
from leukotune.tuner.config import load_study
from leukotune.tuner.metrics import classification_metrics
from leukotune.tuner.tracking.artifacts import log_pytorch_model
from leukotune.tuner.tracking.client import TAG_KIND, Tracker
from leukotune.tuner.train.checkpoints import BEST_FILE, read_checkpoint_file, rebuild_model
from leukotune.tuner.train.data_source import prepare_study_data
from leukotune.tuner.train.loop import build_device_splits, build_loaders, run_training, validation_outputs
from leukotune.tuner.train.sessions import LocalSession

from conftest import SMOKE

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Two epochs of the smoke study's CNN on a few synthetic subjects, and its best epoch logged as the study logs
    its top trials (a LoggedModel with the preprocessing it was trained with)."""
    tmp = tmp_path_factory.mktemp("parity")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEUKOTUNE_CACHE_DIR", str(tmp / "cache"))
        study = load_study(SMOKE, ["data.synthetic.subjects=8", "data.synthetic.cells_per_subject=10",
                                   "train.epochs=2", "train.batch_size=16"])
        session = LocalSession(use_gpu="false", keep_dir=tmp / "ckpt")
        run_training(study, session, log=lambda _m: None)
        data = prepare_study_data(study)
    best = read_checkpoint_file(tmp / "ckpt" / "epoch_0002", BEST_FILE)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    tracker = Tracker(uri, "parity", log=lambda _m: None)
    run_id = tracker.create_run("trial", {TAG_KIND: "trial"})
    model_uri = log_pytorch_model(tracker, run_id, best)
    tracker.end_run(run_id, "FINISHED")
    return {"study": study, "data": data, "best": best, "tracking_uri": uri, "model_uri": model_uri}


def served_probabilities(trained: dict, capsys, monkeypatch) -> np.ndarray:
    """P(ALL) of each validation cell as `leukotune predict` gives it for the image files, in order."""
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    data = trained["data"]
    files = [data.records[i].path for i in data.val_idx]
    code = main(["predict", "--model", trained["model_uri"], *files, "--json", "--tracking-uri",
                 trained["tracking_uri"]])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert [row["file"] for row in rows] == files and all("error" not in row for row in rows)
    return np.array([row["p_all"] for row in rows])


@pytest.mark.parametrize("build", [build_loaders, build_device_splits], ids=["loader", "device"])
def test_predict_gives_the_validation_pass_probabilities(trained, build, capsys, monkeypatch) -> None:
    data, best = trained["data"], trained["best"]
    _, val_batches = build(trained["study"], data, best["preprocessing"], LocalSession(use_gpu="false"))
    labels, validated, _ = validation_outputs(rebuild_model(best), val_batches, nn.CrossEntropyLoss(), CPU)
    assert labels.tolist() == data.labels[data.val_idx].tolist()
    # The network really is the one the loop validated at its best epoch.
    recorded = classification_metrics(labels, validated)
    for name in ("accuracy", "roc_auc", "f1_weighted"):
        assert recorded[name] == pytest.approx(best["metrics"][f"val_{name}"], abs=1e-9), name
    served = served_probabilities(trained, capsys, monkeypatch)
    assert len(np.unique(validated.round(3))) > 1  # a model that says one thing for every cell would prove nothing
    # predict prints six decimals.
    np.testing.assert_allclose(served, validated, rtol=0, atol=2e-6)
