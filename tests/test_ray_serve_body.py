"""What `leukotune serve` reads from a request (tuner/serving/http_body.py): MLflow's /invocations JSON, or one
image file's bytes; every other body is refused with its reason. And the pieces of the command that need no Ray."""
from __future__ import annotations

import base64
import json

import pytest

from leukotune.tuner.cli import serving as serving_cli
from leukotune.tuner.registry.model_uris import registered_parts
from leukotune.tuner.serving import ray_serve
from leukotune.tuner.serving.http_body import BadRequest, ImageRequest, read_request

JSON = "application/json"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def as_json(body: object) -> bytes:
    return json.dumps(body).encode()


@pytest.mark.parametrize("body, content_type, query, expected", [
    (as_json({"dataframe_split": {"columns": ["image"], "data": [[b64(b"one")], [b64(b"two")]]}}), JSON, None,
     ImageRequest([b"one", b"two"])),
    (as_json({"dataframe_records": [{"image": b64(b"one")}], "params": {"tta": True}}), "application/json; "
     "charset=utf-8", None, ImageRequest([b"one"], tta=True)),
    (b"BM raw", "application/octet-stream", None, ImageRequest([b"BM raw"])),
    (b"BM raw", "image/bmp", {"tta": "true"}, ImageRequest([b"BM raw"], tta=True)),
])
def test_mlflow_json_and_raw_bytes_are_read(body, content_type, query, expected):
    assert read_request(body, content_type, query) == expected


@pytest.mark.parametrize("body, content_type, query, status, says", [
    (b"{not json", JSON, None, 400, "not JSON"),
    (as_json([1, 2]), JSON, None, 400, "got a list"),
    (as_json({"images": []}), JSON, None, 400, "dataframe_split"),
    (as_json({"dataframe_split": {"columns": ["picture"], "data": [[b64(b"x")]]}}), JSON, None, 400,
     "expected a column 'image'"),
    (as_json({"dataframe_split": {"columns": ["image"], "data": []}}), JSON, None, 400, "no images"),
    (as_json({"dataframe_split": {"columns": ["image"], "data": [["!!not base64"]]}}), JSON, None, 400,
     "Failed to convert column image"),
    (as_json({"dataframe_records": [{"image": b64(b"x")}], "params": {"tta": "yes"}}), JSON, None, 400,
     "param 'tta' must be true or false"),
    (b"", "application/octet-stream", None, 400, "the body is empty"),
    (b"BM", "image/bmp", {"tta": "maybe"}, 400, "tta='maybe'"),
    (b"hello", "text/plain", None, 415, "unsupported Content-Type 'text/plain'"),
    (b"hello", "", None, 415, "unsupported Content-Type 'none'"),
])
def test_a_bad_body_is_refused_with_its_status_and_reason(body, content_type, query, status, says):
    with pytest.raises(BadRequest) as refused:
        read_request(body, content_type, query)
    assert refused.value.status == status and says in str(refused.value)


@pytest.mark.parametrize("uri, parts", [
    ("models:/leukotune-x@champion", ("leukotune-x", "champion", None)),
    ("models:/leukotune-x/3", ("leukotune-x", None, "3")),
    ("models:/m-0123abcd", None),
    ("runs:/abc/model", None),
])
def test_registered_parts(uri, parts):
    assert registered_parts(uri) == parts


def test_the_commands_defaults_are_the_deployments():
    assert (serving_cli.DEFAULT_PORT, serving_cli.DEFAULT_POLL_S) == (ray_serve.DEFAULT_PORT, ray_serve.DEFAULT_POLL_S)
