"""The logged model as MLflow loads and serves it: a pyfunc whose input is the cell image itself and whose answer
per image is the class, P(ALL) and the decision at the model's operating point.

Input, MLflow's convention for binary data: a DataFrame with one column `image` holding each image file's bytes
(BMP, PNG, TIFF, JPEG: whatever `leukotune predict` reads). The signature declares the column `binary`, so over
`mlflow models serve`'s JSON (`dataframe_split` or `dataframe_records`) the bytes travel base64-encoded and MLflow's
scoring server decodes them; in process, pass the raw bytes. Output, one row per image: `label` (the more likely
class, P(ALL) >= 0.5), `p_all` (P(ALL), its logits divided by the model's temperature) and `call` (the class at the
model's threshold: what `leukotune predict` prints as the class). Temperature and threshold come from the model's
own metadata (1.0 and 0.5 as trained): a served model cannot see the registry's version tags. Param `tta`: the
mean over the four rotations, as `predict --tta`.

Nothing of its own inside: the network is rebuilt from the registry name, builder kwargs and plain state dict in
the MLmodel's `metadata.leukotune` (`models.rebuild_network`, as `leukotune predict` rebuilds it), each image is
decoded and fitted by `data/`, and P(ALL) comes from the one inference path (`evaluation/inference.py`): the same
numbers as `predict`. The class is pickled by reference, so the model loads where leukotune is installed
(`mlflow models serve --env-manager local` from leukotune's environment); its weights are the state dict, read with
`weights_only=True`, never an unpickled network.

Imports stay below the tracking and registry side (tracking/artifacts.py saves this model; evaluation/
logged_models.py, which fetches models from the server, imports registry/ and through it tracking/).
"""
from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Iterator

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from leukotune.data import ImageError, decode_image, write_synthetic_dataset
from leukotune.models import rebuild_network
from leukotune.tuner.evaluation.inference import CLASS_NAMES, REQUIRED_PREPROCESSING, TrainedModel, probabilities

IMAGE_COLUMN = "image"
OUTPUT_COLUMNS = ("label", "p_all", "call")
STATE_DICT_ARTIFACT = "state_dict"
# Where MLflow puts a pyfunc's artifacts inside the model folder; the metadata names the weights by this path.
ARTIFACTS_FOLDER = "artifacts"
# Until calibration fits them: P(ALL) as trained, and the class at 0.5.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_THRESHOLD = 0.5
BATCH_SIZE = 32
# Errors named in a refusal: enough to fix a request, not a page per bad row.
ERRORS_SHOWN = 3

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("binary", IMAGE_COLUMN)]),
    outputs=Schema([ColSpec("string", "label"), ColSpec("double", "p_all"), ColSpec("string", "call")]),
    params=ParamSchema([ParamSpec("tta", "boolean", False)]),
)


class UnusableImageModel(ValueError):
    """The model folder lacks what the pyfunc needs (it was not written by `save_image_model`, or is incomplete)."""


class CellImageModel(mlflow.pyfunc.PythonModel):
    """Cell image files in, `label`, `p_all` and `call` out (see the module's docstring)."""

    trained: TrainedModel

    def load_context(self, context: Any) -> None:
        self.trained = load_image_model(Path(context.artifacts[STATE_DICT_ARTIFACT]))

    @property
    def network(self) -> Any:
        """The raw torch network, in eval mode: `mlflow.pyfunc.load_model(uri).unwrap_python_model().network`."""
        return self.trained.network

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.answer(self.decode(image_column(model_input)), tta=bool((params or {}).get("tta", False)))

    def decode(self, files: list[bytes]) -> np.ndarray:
        """The images' pixels as this model was fed (`decode_images`); a bad image refuses the request."""
        return decode_images(files, self.trained.preprocessing)

    def answer(self, pixels: np.ndarray, tta: bool = False) -> pd.DataFrame:
        """`label`, `p_all`, `call` of decoded images; Ray Serve's batches (serving/ray_serve.py) call it too."""
        return answers(probabilities(self.trained, pixels, tta=tta, batch_size=BATCH_SIZE), self.trained.threshold)


def load_image_model(weights: Path) -> TrainedModel:
    """The model whose state dict is at `weights` inside its model folder, with the operating point its metadata
    carries (1.0 and 0.5 when none)."""
    model_dir = next((p for p in weights.parents if (p / "MLmodel").is_file()), None)
    facts = (Model.load(str(model_dir)).metadata or {}).get("leukotune") if model_dir is not None else None
    if not isinstance(facts, dict):
        raise UnusableImageModel(f"no MLmodel with a `metadata.leukotune` block above {weights}")
    prep = dict(facts.get("preprocessing") or {})
    missing = [k for k in ("model_name", "model_kwargs") if k not in facts]
    missing += [f"preprocessing.{k}" for k in REQUIRED_PREPROCESSING if k not in prep]
    class_names = list(facts.get("class_names") or CLASS_NAMES)
    temperature = float(facts.get("temperature", DEFAULT_TEMPERATURE))
    threshold = float(facts.get("threshold", DEFAULT_THRESHOLD))
    if missing:
        raise UnusableImageModel(f"the model's leukotune metadata lacks {', '.join(missing)}")
    if sorted(class_names) != ["all", "hem"]:
        raise UnusableImageModel(f"the model's classes are {class_names}; expected hem and all")
    if not (math.isfinite(temperature) and temperature > 0 and 0.0 <= threshold <= 1.0):
        raise UnusableImageModel(f"the model's operating point is unusable: temperature {temperature} (must be "
                                 f"> 0), threshold {threshold} (must be in [0, 1])")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    network = rebuild_network(facts["model_name"], facts["model_kwargs"], state,
                              ensemble_members=int(facts.get("ensemble_members", 0)))
    return TrainedModel(network, prep, class_names, facts["model_name"], facts.get("best_epoch"),
                        temperature=temperature, threshold=threshold)


def refuse(message: str) -> MlflowException:
    """A request the model cannot answer: MLflow's scoring server turns this error code into HTTP 400."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def image_column(model_input: Any) -> list[bytes]:
    """The image bytes of each row; a missing column or an empty request is refused."""
    if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input.columns:
        found = list(model_input.columns) if isinstance(model_input, pd.DataFrame) else type(model_input).__name__
        raise refuse(f"expected a column {IMAGE_COLUMN!r} of image file bytes (base64 in JSON), got {found}")
    values = list(model_input[IMAGE_COLUMN])
    if not values:
        raise refuse(f"no images: the {IMAGE_COLUMN!r} column is empty")
    wrong = [i for i, value in enumerate(values) if not isinstance(value, (bytes, bytearray))]
    if wrong:
        raise refuse(f"row(s) {wrong[:ERRORS_SHOWN]} of {IMAGE_COLUMN!r} are not bytes: pass image file bytes "
                     f"(base64 in JSON)")
    return [bytes(value) for value in values]


def decode_images(files: list[bytes], prep: dict[str, Any]) -> np.ndarray:
    """uint8 (N, C, H, W) at the model's size and colour (`data.decode_image`, as `predict` reads files); one
    unreadable image refuses the request, naming the rows and why."""
    size, color = int(prep["image_size"]), prep["color"]
    decoded, errors = [], []
    for row, data in enumerate(files):
        try:
            decoded.append(decode_image(data, size, color, name=f"row {row}"))
        except ImageError as exc:
            errors.append(str(exc))
    if errors:
        shown = "; ".join(errors[:ERRORS_SHOWN]) + ("; ..." if len(errors) > ERRORS_SHOWN else "")
        raise refuse(f"{len(errors)} of {len(files)} image(s) could not be read as cell images: {shown}")
    return np.stack(decoded)


def answers(p_all: np.ndarray, threshold: float) -> pd.DataFrame:
    p = np.asarray(p_all, dtype=np.float64)
    return pd.DataFrame({"label": np.where(p >= 0.5, "all", "hem"), "p_all": p,
                         "call": np.where(p >= threshold, "all", "hem")}, columns=list(OUTPUT_COLUMNS))


def example_input() -> pd.DataFrame:
    """One tiny cell image in the model's input format: a 32 px synthetic cell, a BMP as C-NMC stores its cells."""
    with tempfile.TemporaryDirectory(prefix="leukotune-example-") as tmp:
        write_synthetic_dataset(tmp, subjects=2, cells_per_subject=1, size=32)
        first = sorted(Path(tmp).rglob("*.bmp"))[0]
        return pd.DataFrame({IMAGE_COLUMN: [first.read_bytes()]})


def save_image_model(path: Path, weights: Path, facts: dict[str, Any], mlflow_model: Model,
                     pip_requirements: list[str]) -> Path:
    """Write the pyfunc's folder at `path`: the state dict at `weights` as its artifact, and `facts` (what the
    network is and how it was fed: registry name, builder kwargs, preprocessing, operating point) as the MLmodel's
    `metadata.leukotune`, with `state_dict` naming where the weights land."""
    metadata = {"leukotune": {**facts, "state_dict": f"{ARTIFACTS_FOLDER}/{weights.name}"}}
    with _quiet_pyfunc_logger():
        mlflow.pyfunc.save_model(str(path), python_model=CellImageModel(),
                                 artifacts={STATE_DICT_ARTIFACT: str(weights)}, signature=SIGNATURE,
                                 input_example=example_input(), metadata=metadata, mlflow_model=mlflow_model,
                                 pip_requirements=pip_requirements)
    if not (path / metadata["leukotune"]["state_dict"]).is_file():  # MLflow moved its artifacts folder
        raise RuntimeError(f"the model's weights are not at {metadata['leukotune']['state_dict']} in {path}")
    return path


@contextlib.contextmanager
def _quiet_pyfunc_logger() -> Iterator[None]:
    """MLflow's pyfunc logger says, for every model a study logs, that it validates the input example and that a
    Python object is pickled by reference (on purpose here, see the module's docstring): lines that would fill the
    study's console. Errors still show; the level is put back after the save."""
    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
