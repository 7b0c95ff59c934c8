"""The champion served by MLflow's own server: a tiny smoke study, `leukotune promote`, then
`mlflow models serve -m models:/NAME@champion --env-manager local` answering `POST /invocations` with the 60 real
C-NMC cells of ../shared/cnmc-sample: the same calls and P(ALL) as `leukotune predict`. Bad bodies (not an image,
a truncated BMP, no rows, a wrong column, not JSON) are a 4xx with a reason, and the server answers the next good
request. `make e2e` runs it; the server is stopped by its process group whatever fails.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from e2e.servers import free_port, post_invocations as post, start, wait_http

from conftest import REPO_ROOT, SMOKE, TINY, local_uri, require_cnmc_sample, run_leukotune, sets

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO_ROOT / "e2e-artifacts"
MLFLOW = str(Path(sys.executable).parent / "mlflow")
EXPERIMENT = "serve-e2e"
MODEL_NAME = f"leukotune-{EXPERIMENT}"
MODEL_URI = f"models:/{MODEL_NAME}@champion"
# `leukotune predict` prints six decimals; the server's batches differ from predict's, which moves the last bits.
TOLERANCE = 2e-6
BATCH = 12  # cells per request: 60 real cells are about 36 MB of BMP, 48 MB as base64 in one body
# What promote stores with a registered version (tuner/evaluation/calibration.py), as trained when absent.
VERSION_TAGS = {"temperature": ("leukotune.temperature", 1.0), "threshold": ("leukotune.threshold", 0.5)}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlflow-serve")


@pytest.fixture(scope="module")
def env(workdir) -> dict[str, str]:
    values = {**os.environ, "LEUKOTUNE_CACHE_DIR": str(workdir / "cache"), "LEUKOTUNE_MIN_FREE_GB": "0.1",
              "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    for inherited in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "RAY_ADDRESS"):
        values.pop(inherited, None)
    return values


@pytest.fixture(scope="module")
def champion(workdir, env) -> str:
    """A one-trial smoke study on a private local Ray, its model promoted: returns the tracking URI."""
    tuned = run_leukotune(["tune", "--config", str(SMOKE), "--address", "local", *sets(TINY + [
        "tune.num_samples=1", "train.epochs=2", "tune.scheduler=fifo", f"tracking.experiment={EXPERIMENT}"])],
        workdir, env)
    assert tuned.returncode == 0, tuned.stdout[-3000:] + tuned.stderr[-3000:]
    uri = local_uri(workdir)
    promoted = run_leukotune(["promote", "--experiment", EXPERIMENT, "--tracking-uri", uri], workdir, env)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert promoted.stdout.strip().splitlines()[-1] == MODEL_URI
    return uri


@pytest.fixture(scope="module")
def cells() -> list[Path]:
    files = sorted((require_cnmc_sample() / "training_data").rglob("*.bmp"))
    assert len(files) == 60
    return files


@pytest.fixture(scope="module")
def server(champion, workdir, env):
    """`mlflow models serve` of the champion on a free loopback port, tracking to the study's SQLite store."""
    port = free_port()
    # The server execs `uvicorn` found on PATH: this venv's, as in a shell where it is activated.
    path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    process = start("mlflow-models-serve", [MLFLOW, "models", "serve", "-m", MODEL_URI, "--env-manager", "local",
                                            "-p", str(port), "-h", "127.0.0.1"],
                    {**env, "MLFLOW_TRACKING_URI": champion, "PATH": path}, workdir, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ping", timeout_s=600, process=process)  # imports and a model load on a loaded machine
        yield url, process
    finally:
        process.stop()  # SIGTERM, then SIGKILL to its process group (its own session): its workers go with it
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "mlflow-serve.log").write_text(process.tail(200_000))
    assert group_gone(process.process.pid), "a process of the server's group outlived stop()"


def group_gone(pgid: int, timeout_s: float = 60.0) -> bool:
    """Whether no process is left in group `pgid` (waited for: killed workers are reaped by their new parent)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


# ---------------------------------------------------------------- requests

def encoded(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def split_body(images: list[bytes], **params: object) -> dict:
    body: dict = {"dataframe_split": {"columns": ["image"], "data": [[encoded(b)] for b in images]}}
    if params:
        body["params"] = params
    return body


def served(url: str, files: list[Path], **params: object) -> list[dict]:
    rows: list[dict] = []
    for start_at in range(0, len(files), BATCH):
        chunk = files[start_at:start_at + BATCH]
        status, answer = post(url, split_body([p.read_bytes() for p in chunk], **params))
        assert status == 200, answer
        rows += answer["predictions"]
    return rows


@pytest.fixture(scope="module")
def answers(server, cells) -> list[dict]:
    url, _ = server
    started = time.monotonic()
    rows = served(url, cells)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "mlflow-serve.json").write_text(json.dumps(
        {"model": MODEL_URI, "seconds": round(time.monotonic() - started, 2), "served": rows}, indent=1))
    return rows


# ---------------------------------------------------------------- what predict says

def operating_points(tracking_uri: str) -> tuple[dict[str, float], dict[str, float]]:
    """(what the served model carries in its MLmodel, what the registry stores with the champion's version)."""
    from leukotune.tuner.registry.model_uris import process_tracking_uri

    with process_tracking_uri(tracking_uri):
        meta = (mlflow.models.get_model_info(MODEL_URI).metadata or {})["leukotune"]
    version = MlflowClient(tracking_uri, registry_uri=tracking_uri).get_model_version_by_alias(MODEL_NAME, "champion")
    carried = {key: float(meta.get(key, default)) for key, (_, default) in VERSION_TAGS.items()}
    stored = {key: float(version.tags.get(tag, default)) for key, (tag, default) in VERSION_TAGS.items()}
    return carried, stored


def predict_as_served(tracking_uri: str, files: list[Path], tta: bool = False) -> list[dict]:
    """`leukotune predict`'s own code (fetch, rebuild, read the files, the one inference path) on the champion, at the
    operating point the served model carries: rows as `predict --json` prints them."""
    from leukotune.tuner.evaluation import logged_models
    from leukotune.tuner.evaluation.predict import predict_files

    carried, _ = operating_points(tracking_uri)
    model = dataclasses.replace(logged_models.load_model(MODEL_URI, tracking_uri), **carried)
    return [row.to_dict() for row in predict_files(model, [(p, None) for p in files], tta=tta)]


def predicted(champion: str, workdir: Path, env: dict[str, str], files: list[Path]) -> list[dict]:
    """`leukotune predict --json` on the champion, as a user runs it."""
    result = run_leukotune(["predict", "--model", MODEL_URI, *map(str, files), "--json", "--tracking-uri",
                            champion], workdir, env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads(result.stdout)["predictions"]
    assert [row["file"] for row in rows] == list(map(str, files)) and all("error" not in r for r in rows)
    return rows


def assert_same(served_rows: list[dict], predict_rows: list[dict]) -> None:
    assert len(served_rows) == len(predict_rows)
    for got, want in zip(served_rows, predict_rows):
        assert got["call"] == want["class"] and abs(got["p_all"] - want["p_all"]) <= TOLERANCE, (got, want)
        assert got["label"] == ("all" if got["p_all"] >= 0.5 else "hem")


# ---------------------------------------------------------------- the answers

def test_the_server_answers_the_real_cells_as_predicts_code_does(answers, champion, cells):
    """Bytes over HTTP, decoded in the model, against files read by `predict`: the same network and preprocessing."""
    assert_same(answers, predict_as_served(champion, cells))
    assert len({round(r["p_all"], 4) for r in answers}) > 1  # one answer for every cell would prove nothing


def test_the_server_answers_as_leukotune_predict_on_the_champion(answers, champion, workdir, env, cells):
    """Promote registered a copy of the trial's model with the version's temperature and threshold inside: the server
    gives the calibrated P(ALL) and the call at the stored operating point, as `predict` does from the tags."""
    carried, stored = operating_points(champion)
    assert carried == stored  # exact: both are the same floats, written by promote
    assert stored["temperature"] != 1.0  # the smoke study's test side fitted one: calibration is really served
    assert_same(answers, predicted(champion, workdir, env, cells))


def test_records_orientation_and_tta_param(server, answers, champion, cells):
    url, _ = server
    records = {"dataframe_records": [{"image": encoded(p.read_bytes())} for p in cells[:2]]}
    status, answer = post(url, records)
    assert status == 200 and len(answer["predictions"]) == 2
    for got, want in zip(answer["predictions"], answers[:2]):  # a batch of 2, not 12: the last bits may move
        assert got["call"] == want["call"] and got["p_all"] == pytest.approx(want["p_all"], abs=TOLERANCE)
    chosen = cells[::10]
    assert_same(served(url, chosen, tta=True), predict_as_served(champion, chosen, tta=True))


# ---------------------------------------------------------------- refusals

def truncated(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[: len(raw) // 2]


@pytest.mark.parametrize("case, body, says", [
    ("not an image", lambda c: split_body([b"hello, not a picture"]), "not a format Pillow can read"),
    ("a truncated BMP", lambda c: split_body([c[0].read_bytes(), truncated(c[1])]), "row 1: cannot decode"),
    ("an empty list", lambda c: split_body([]), "no images"),
    ("a wrong column", lambda c: {"dataframe_split": {"columns": ["picture"], "data": [[encoded(c[0].read_bytes())]]}},
     "missing inputs ['image']"),
    ("an empty image", lambda c: split_body([b""]), "empty"),
    ("not JSON", lambda c: b"{this is not json", "JSON"),
    ("no data key", lambda c: {"images": []}, "dataframe_split"),
])
def test_a_bad_body_is_a_4xx_with_a_reason_and_the_server_keeps_serving(server, cells, case, body, says):
    url, process = server
    status, answer = post(url, body(cells))
    assert 400 <= status < 500, (case, status, answer)
    assert says in answer.get("message", ""), (case, answer)
    assert process.alive()
    status, good = post(url, split_body([cells[2].read_bytes()]))
    assert status == 200 and len(good["predictions"]) == 1, (case, good)
