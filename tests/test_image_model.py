"""The logged model as MLflow loads it: a pyfunc that takes cell image bytes and answers label, P(ALL) and the call
at its operating point, with the preprocessing and the inference path of `leukotune predict`.

A tiny model trained in-process by the one loop and logged as a study logs its top trials, then loaded from a local
folder with `mlflow.pyfunc.load_model` (real MLflow, no server): the same P(ALL) as the inference path for real
C-NMC cells, refusals a server turns into 400, and an operating point carried in the model's metadata.
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.exceptions import MlflowException
from PIL import Image

from leukotune.data import ImageError, decode_image, read_image
from leukotune.tuner.config import load_study
from leukotune.tuner.evaluation import logged_models
from leukotune.tuner.evaluation.inference import probabilities
from leukotune.tuner.evaluation.predict import predict_files
from leukotune.tuner.registry.model_uris import process_tracking_uri
from leukotune.tuner.serving import IMAGE_COLUMN, OUTPUT_COLUMNS, CellImageModel
from leukotune.tuner.tracking.artifacts import log_pytorch_model
from leukotune.tuner.tracking.client import TAG_KIND, Tracker
from leukotune.tuner.train.checkpoints import BEST_FILE, read_checkpoint_file
from leukotune.tuner.train.sessions import LocalSession

from conftest import SMOKE

CELLS = 3


@pytest.fixture(scope="module")
def logged(tmp_path_factory) -> dict:
    """One epoch of the smoke study's CNN on a few synthetic subjects, its best epoch logged twice as the study
    logs a model: as trained, and with an operating point (temperature 2, threshold 0.6); both downloaded."""
    tmp = tmp_path_factory.mktemp("image-model")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEUKOTUNE_CACHE_DIR", str(tmp / "cache"))
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        study = load_study(SMOKE, ["data.synthetic.subjects=8", "data.synthetic.cells_per_subject=8",
                                   "train.epochs=1", "train.batch_size=16", "train.conv_layers=2",
                                   "train.base_filters=8", "train.dense=16"])
        from leukotune.tuner.train.loop import run_training

        run_training(study, LocalSession(use_gpu="false", keep_dir=tmp / "ckpt"), log=lambda _m: None)
        best = read_checkpoint_file(tmp / "ckpt" / "epoch_0001", BEST_FILE)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        tracker = Tracker(uri, "image-model", log=lambda _m: None)
        run_id = tracker.create_run("trial", {TAG_KIND: "trial"})
        plain = log_pytorch_model(tracker, run_id, best)
        calibrated = log_pytorch_model(tracker, run_id, best, temperature=2.0, threshold=0.6)
        tracker.end_run(run_id, "FINISHED")
        with process_tracking_uri(uri):
            folders = {name: Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp / name),
                                                                       tracking_uri=uri))
                       for name, model_uri in (("plain", plain), ("calibrated", calibrated))}
    return {"uri": uri, "plain": plain, "calibrated": calibrated, "folders": folders, "best": best}


@pytest.fixture(scope="module")
def cells(cnmc_sample) -> list[Path]:
    """Real cells of both classes."""
    found = sorted((cnmc_sample / "training_data").rglob("*.bmp"))
    return [p for p in found if p.name.endswith("_all.bmp")][:2] + [p for p in found if p.name.endswith("_hem.bmp")][:1]


def frame(files: list[Path]) -> pd.DataFrame:
    return pd.DataFrame({IMAGE_COLUMN: [p.read_bytes() for p in files]})


def expected_p_all(model, files: list[Path], tta: bool = False) -> np.ndarray:
    prep = model.preprocessing
    return probabilities(model, np.stack([read_image(p, prep["image_size"], prep["color"]) for p in files]), tta=tta)


# ---------------------------------------------------------------- what the folder holds

def test_the_model_is_a_pyfunc_that_describes_images_not_tensors(logged):
    folder = logged["folders"]["plain"]
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    assert set(mlmodel["flavors"]) == {"python_function"}
    assert json.loads(mlmodel["signature"]["inputs"]) == [{"type": "binary", "name": IMAGE_COLUMN, "required": True}]
    assert [c["name"] for c in json.loads(mlmodel["signature"]["outputs"])] == list(OUTPUT_COLUMNS)
    assert [p["name"] for p in json.loads(mlmodel["signature"]["params"])] == ["tta"]
    meta = mlmodel["metadata"]["leukotune"]
    assert (meta["temperature"], meta["threshold"]) == (1.0, 0.5)
    # The serving example is a request a client could send: one base64 image that decodes at any size.
    example = json.loads((folder / mlmodel["saved_input_example_info"]["serving_input_path"]).read_text())
    split = example["dataframe_split"]
    assert split["columns"] == [IMAGE_COLUMN] and len(split["data"]) == 1
    assert decode_image(base64.b64decode(split["data"][0][0]), 64, "rgb").shape == (3, 64, 64)
    # The weights are a plain state dict (read without unpickling), where `leukotune predict` is told to look.
    state = torch.load(folder / meta["state_dict"], weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in logged["best"]["model"].items())


# ---------------------------------------------------------------- answers

def test_pyfunc_gives_the_inference_path_probabilities_for_real_cells(logged, cells):
    model = mlflow.pyfunc.load_model(str(logged["folders"]["plain"]))
    answer = model.predict(frame(cells))
    assert list(answer.columns) == list(OUTPUT_COLUMNS) and len(answer) == CELLS
    reference = logged_models.load_model(logged["plain"], logged["uri"])  # as `leukotune predict` loads it
    expected = expected_p_all(reference, cells)
    np.testing.assert_allclose(answer["p_all"].to_numpy(), expected, rtol=0, atol=1e-6)
    assert answer["call"].tolist() == [r.label for r in predict_files(reference, [(p, None) for p in cells])]
    assert answer["label"].tolist() == answer["call"].tolist()  # threshold 0.5: the call is the more likely class
    assert len(np.unique(expected.round(4))) > 1  # a model that says one thing for every cell would prove nothing


def test_tta_param_is_the_mean_over_the_rotations(logged, cells):
    model = mlflow.pyfunc.load_model(str(logged["folders"]["plain"]))
    reference = logged_models.load_model(logged["plain"], logged["uri"])
    answer = model.predict(frame(cells), params={"tta": True})
    np.testing.assert_allclose(answer["p_all"].to_numpy(), expected_p_all(reference, cells, tta=True), atol=1e-6)


def test_the_operating_point_in_the_metadata_calibrates_p_all_and_moves_the_call(logged, cells):
    model = mlflow.pyfunc.load_model(str(logged["folders"]["calibrated"]))
    answer = model.predict(frame(cells))
    trained = model.unwrap_python_model().trained
    assert (trained.temperature, trained.threshold) == (2.0, 0.6)
    logits = torch.stack([trained.network(torch.from_numpy(x)[None]) for x in (
        trained_input(trained, p) for p in cells)]).squeeze(1)
    np.testing.assert_allclose(answer["p_all"].to_numpy(), torch.softmax(logits / 2.0, dim=1)[:, 1].detach().numpy(),
                               atol=1e-6)
    assert answer["label"].tolist() == np.where(answer["p_all"] >= 0.5, "all", "hem").tolist()
    assert answer["call"].tolist() == np.where(answer["p_all"] >= 0.6, "all", "hem").tolist()


def trained_input(trained, path: Path) -> np.ndarray:
    from leukotune.data import Normalization

    prep = trained.preprocessing
    pixels = read_image(path, prep["image_size"], prep["color"])
    return Normalization(prep["mean"], prep["std"]).numpy(pixels)


def test_the_raw_network_is_one_attribute_away(logged):
    network = mlflow.pyfunc.load_model(str(logged["folders"]["plain"])).unwrap_python_model().network
    assert isinstance(network, torch.nn.Module) and not network.training
    assert all(torch.equal(network.state_dict()[k], v) for k, v in logged["best"]["model"].items())


# ---------------------------------------------------------------- refusals (a server answers them with 400)

def truncated_bmp(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[: len(raw) // 2]


@pytest.mark.parametrize("case, request_frame, says", [
    ("not an image", lambda c: pd.DataFrame({IMAGE_COLUMN: [b"hello, not a picture"]}), "not a format Pillow"),
    ("truncated BMP", lambda c: pd.DataFrame({IMAGE_COLUMN: [c[0].read_bytes(), truncated_bmp(c[0])]}), "row 1"),
    ("empty bytes", lambda c: pd.DataFrame({IMAGE_COLUMN: [b""]}), "empty"),
    ("no rows", lambda c: pd.DataFrame({IMAGE_COLUMN: pd.Series([], dtype=object)}), "no images"),
    ("wrong column", lambda c: pd.DataFrame({"picture": [c[0].read_bytes()]}), "missing inputs ['image']"),
])
def test_a_bad_request_is_refused_with_its_reason(logged, cells, case, request_frame, says):
    model = mlflow.pyfunc.load_model(str(logged["folders"]["plain"]))
    with pytest.raises(MlflowException) as refused:
        model.predict(request_frame(cells))
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE" and says in refused.value.message, case
    assert len(model.predict(frame(cells[:1]))) == 1  # and the model still answers


def test_predict_refuses_a_frame_without_the_column_even_unchecked(logged):
    """Called directly (no MLflow schema check in front), the model names the column it wants."""
    model = CellImageModel()
    with pytest.raises(MlflowException, match="expected a column 'image'"):
        model.predict(None, pd.DataFrame({"x": [b""]}))


# ---------------------------------------------------------------- bytes decode as files do

def test_decode_image_gives_read_image_pixels(cells, tmp_path):
    gray_png = tmp_path / "cell.png"
    Image.open(cells[0]).convert("L").save(gray_png)
    for path in [*cells, gray_png]:
        for size, color in ((64, "rgb"), (32, "gray")):
            assert np.array_equal(decode_image(path.read_bytes(), size, color), read_image(path, size, color))


def test_decode_image_refuses_what_read_image_refuses(cells):
    for data, says in ((truncated_bmp(cells[0]), "cannot decode"), (b"", "empty"), (b"BM nope", "cannot decode")):
        with pytest.raises(ImageError, match=says):
            decode_image(data, 64, "rgb", name="row 7")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    assert decode_image(buffer.getvalue(), 16, "rgb").shape == (3, 16, 16)


# ---------------------------------------------------------------- an operating point written into a copy

def test_a_calibrated_copy_serves_the_operating_point(logged, cells, tmp_path):
    """What promote registers when it stores calibration: the same network, its temperature and threshold inside."""
    from leukotune.tuner.serving.calibrated_copy import TAG_COPIED_FROM, log_calibrated_copy

    copy_uri = log_calibrated_copy(logged["uri"], logged["plain"], temperature=2.0, threshold=0.6)
    assert copy_uri not in (logged["plain"], logged["calibrated"])
    with process_tracking_uri(logged["uri"]):
        copy = mlflow.MlflowClient(logged["uri"]).get_logged_model(copy_uri[len("models:/"):])
        folder = mlflow.artifacts.download_artifacts(copy_uri, dst_path=str(tmp_path), tracking_uri=logged["uri"])
    assert copy.tags[TAG_COPIED_FROM] == logged["plain"][len("models:/"):]
    served = mlflow.pyfunc.load_model(folder).predict(frame(cells))
    expected = mlflow.pyfunc.load_model(str(logged["folders"]["calibrated"])).predict(frame(cells))
    pd.testing.assert_frame_equal(served, expected)
