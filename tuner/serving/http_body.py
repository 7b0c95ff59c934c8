"""What a request to a served champion carries, read as MLflow's scoring server reads `POST /invocations`, so a
client of `mlflow models serve` works unchanged against `leukotune serve`.

Two bodies are accepted:
- `application/json`: MLflow's `dataframe_split` or `dataframe_records` with one column `image` holding each image
  file base64-encoded, and optionally `"params": {"tta": true}` (parsed by MLflow's own `infer_and_parse_data`
  against the image model's signature, so the base64 rules are MLflow's);
- the bytes of one image file as `application/octet-stream` or `image/*` (`curl --data-binary @cell.bmp`), with
  `?tta=true` in the query.

Anything else is refused with a `BadRequest` naming the reason; `leukotune serve` answers it with its status.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from mlflow.exceptions import MlflowException
from mlflow.pyfunc.scoring_server import infer_and_parse_data

from leukotune.tuner.serving.image_model import SIGNATURE, image_column

JSON_TYPE = "application/json"
RAW_TYPES = ("application/octet-stream", "image/")
PARAMS_KEY = "params"  # MLflow's key for inference params in a JSON body
TRUE_TEXTS, FALSE_TEXTS = ("1", "true", "yes"), ("0", "false", "no", "")


class BadRequest(ValueError):
    """A body the model cannot answer; `status` is the HTTP status to answer with (400, or 415 for the type)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ImageRequest:
    """The image files of one request, in order, and whether to average over the four rotations."""

    files: list[bytes]
    tta: bool = False


def read_request(body: bytes, content_type: str, query: Mapping[str, str] | None = None) -> ImageRequest:
    """The request's images, or BadRequest saying why there are none."""
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime == JSON_TYPE:
        return _read_json(body)
    if mime == RAW_TYPES[0] or mime.startswith(RAW_TYPES[1]):
        if not body:
            raise BadRequest("the body is empty: send one image file's bytes")
        return ImageRequest([body], _flag((query or {}).get("tta", "")))
    raise BadRequest(f"unsupported Content-Type {content_type or 'none'!r}: send {JSON_TYPE} (MLflow's "
                     f"dataframe_split or dataframe_records, column 'image' base64) or one image file as "
                     f"application/octet-stream or image/*", status=415)


def _read_json(body: bytes) -> ImageRequest:
    try:
        decoded = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(decoded, dict):
        raise BadRequest(f"expected a JSON object with dataframe_split or dataframe_records, got a "
                         f"{type(decoded).__name__}")
    params = decoded.pop(PARAMS_KEY, None) or {}
    if not isinstance(params, dict):
        raise BadRequest(f"'params' must be an object, got {type(params).__name__}")
    tta = params.get("tta", False)
    if not isinstance(tta, bool):
        raise BadRequest(f"param 'tta' must be true or false, got {tta!r}")
    try:
        frame = infer_and_parse_data(decoded, SIGNATURE.inputs)
        files = image_column(frame)
    except MlflowException as exc:
        raise BadRequest(exc.message) from None
    return ImageRequest(files, tta)


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in TRUE_TEXTS:
        return True
    if lowered in FALSE_TEXTS:
        return False
    raise BadRequest(f"query parameter tta={text!r}: use true or false")


def predictions_body(rows: list[dict[str, Any]], version: str | None) -> dict[str, Any]:
    """MLflow's response shape (`{"predictions": [...]}`), plus the registered version that answered."""
    return {"predictions": rows, "model_version": version}
