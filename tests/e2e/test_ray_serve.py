"""The champion on Ray Serve: a two-trial smoke study, `leukotune promote`, then `leukotune serve` on a
token-authenticated `ray start` head (as a team's cluster is) answering `POST /invocations` with the 60 real C-NMC
cells of ../shared/cnmc-sample: the same calls and P(ALL) as `leukotune predict`, in MLflow's JSON body and as raw
image bytes. A bad body is a 4xx with a reason and the next request is answered; the alias moved to the other
trial's version is served without a restart; `leukotune serve --stop` takes the application off the cluster.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from leukotune.tuner.registry.model_uris import process_tracking_uri

from e2e.servers import free_port, post_invocations as post, ray_env, start_ray_head, write_token
from e2e.test_mlflow_serve import BATCH, TOLERANCE, encoded, split_body

from conftest import REPO_ROOT, SMOKE, TINY, local_uri, require_cnmc_sample, run_leukotune, sets

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO_ROOT / "e2e-artifacts"
EXPERIMENT = "ray-serve-e2e"
MODEL_NAME = f"leukotune-{EXPERIMENT}"
MODEL_URI = f"models:/{MODEL_NAME}@champion"
POLL_S = 2


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray-serve")


@pytest.fixture(scope="module")
def env(workdir) -> dict[str, str]:
    values = {**ray_env(write_token(workdir)), "LEUKOTUNE_CACHE_DIR": str(workdir / "cache"),
              "LEUKOTUNE_MIN_FREE_GB": "0.1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    for inherited in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        values.pop(inherited, None)
    return values


@pytest.fixture(scope="module")
def cluster(workdir, env):
    head = start_ray_head(workdir, env, num_cpus=2)
    try:
        yield head
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "ray-serve-head.log").write_text(head.nodes[0].tail(200_000))
        head.stop()


@pytest.fixture(scope="module")
def champion(workdir, env, cluster) -> dict:
    """Two trials on the cluster, the best promoted (version 1, calibrated), the other registered as version 2."""
    tuned = run_leukotune(["tune", "--config", str(SMOKE), "--address", cluster.gcs_address, *sets(TINY + [
        "tune.num_samples=2", "train.epochs=2", "tune.scheduler=fifo", f"tracking.experiment={EXPERIMENT}"])],
        workdir, env)
    assert tuned.returncode == 0, tuned.stdout[-3000:] + tuned.stderr[-3000:]
    uri = local_uri(workdir)
    promoted = run_leukotune(["promote", "--experiment", EXPERIMENT, "--tracking-uri", uri, "--json"], workdir, env)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    first = json.loads(promoted.stdout)
    client = MlflowClient(uri, registry_uri=uri)
    other = [r for r in client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                           "tags.`leukotune.kind` = 'trial'")
             if r.info.run_id != first["run_id"] and "leukotune.model_uri" in r.data.tags]
    assert other, "the second trial logged no model"
    with process_tracking_uri(uri):  # MLflow's SQLite registry finds the LoggedModel through the process's URIs
        second = client.create_model_version(MODEL_NAME, source=other[0].data.tags["leukotune.model_uri"],
                                             run_id=other[0].info.run_id)
    return {"uri": uri, "client": client, "first": first["version"], "second": str(second.version)}


@pytest.fixture(scope="module")
def served(champion, cluster, workdir, env):
    port = free_port()
    args = ["--address", cluster.gcs_address, "--tracking-uri", champion["uri"]]
    result = run_leukotune(["serve", "--model", MODEL_URI, "--port", str(port), "--poll-s", str(POLL_S), *args],
                           workdir, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "stays on the cluster" in result.stdout
    url = f"http://127.0.0.1:{port}"
    try:
        yield url
    finally:
        stopped = run_leukotune(["serve", "--stop", *args], workdir, env)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "ray-serve-stop.log").write_text(stopped.stdout + stopped.stderr)


@pytest.fixture(scope="module")
def cells() -> list[Path]:
    files = sorted((require_cnmc_sample() / "training_data").rglob("*.bmp"))
    assert len(files) == 60
    return files


def served_rows(url: str, files: list[Path]) -> tuple[list[dict], set[str]]:
    rows, versions = [], set()
    for start_at in range(0, len(files), BATCH):
        status, answer = post(url, split_body([p.read_bytes() for p in files[start_at:start_at + BATCH]]))
        assert status == 200, answer
        rows += answer["predictions"]
        versions.add(answer["model_version"])
    return rows, versions


def predicted(model_uri: str, tracking_uri: str, workdir: Path, env: dict[str, str], files: list[Path]) -> list[dict]:
    result = run_leukotune(["predict", "--model", model_uri, *map(str, files), "--json", "--tracking-uri",
                            tracking_uri], workdir, env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(result.stdout)["predictions"]


def assert_same(served: list[dict], predict_rows: list[dict]) -> None:
    assert len(served) == len(predict_rows)
    for got, want in zip(served, predict_rows):
        assert got["call"] == want["class"] and abs(got["p_all"] - want["p_all"]) <= TOLERANCE, (got, want)


def test_ray_serve_answers_as_leukotune_predict(served, champion, cells, workdir, env):
    rows, versions = served_rows(served, cells)
    assert versions == {champion["first"]}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "ray-serve.json").write_text(json.dumps({"model": MODEL_URI, "served": rows}, indent=1))
    assert_same(rows, predicted(MODEL_URI, champion["uri"], workdir, env, cells))
    assert len({round(r["p_all"], 4) for r in rows}) > 1
    status, raw = post(served, cells[5].read_bytes(), content_type="application/octet-stream")
    assert status == 200 and raw["model_version"] == champion["first"], raw  # one image file's bytes, as is
    assert_same(raw["predictions"], [{"class": rows[5]["call"], "p_all": rows[5]["p_all"]}])


@pytest.mark.parametrize("case, body, content_type, says, code", [
    ("not an image", lambda c: split_body([b"hello, not a picture"]), "application/json",
     "not a format Pillow can read", 400),
    ("a truncated BMP", lambda c: split_body([c[0].read_bytes(), c[1].read_bytes()[:5000]]), "application/json",
     "row 1: cannot decode", 400),
    ("an empty list", lambda c: split_body([]), "application/json", "no images", 400),
    ("a wrong column", lambda c: {"dataframe_split": {"columns": ["picture"], "data": [[encoded(b"x")]]}},
     "application/json", "expected a column 'image'", 400),
    ("not JSON", lambda c: b"{this is not json", "application/json", "not JSON", 400),
    ("no data key", lambda c: {"images": []}, "application/json", "dataframe_split", 400),
    ("raw bytes that are no image", lambda c: b"\x00" * 64, "application/octet-stream", "row 0", 400),
    ("a text body", lambda c: b"hello", "text/plain", "unsupported Content-Type", 415),
])
def test_a_bad_body_is_a_4xx_with_a_reason_and_serving_goes_on(served, cells, case, body, content_type, says, code):
    status, answer = post(served, body(cells), content_type=content_type)
    assert status == code, (case, status, answer)
    assert says in answer.get("message", ""), (case, answer)
    status, good = post(served, split_body([cells[2].read_bytes()]))
    assert status == 200 and len(good["predictions"]) == 1, (case, good)


def test_a_moved_alias_is_served_without_a_restart(served, champion, cells, workdir, env):
    client = champion["client"]
    client.set_registered_model_alias(MODEL_NAME, "champion", champion["second"])
    deadline = time.monotonic() + 300  # POLL_S plus a model load on a loaded machine
    answer: dict = {}
    while time.monotonic() < deadline:
        status, answer = post(served, split_body([cells[0].read_bytes()]))
        assert status == 200, answer
        if answer["model_version"] == champion["second"]:
            break
        time.sleep(0.5)
    assert answer.get("model_version") == champion["second"], answer
    chosen = cells[::5]
    rows, versions = served_rows(served, chosen)
    assert versions == {champion["second"]}
    assert_same(rows, predicted(f"models:/{MODEL_NAME}/{champion['second']}", champion["uri"], workdir, env, chosen))


def test_stop_takes_the_application_off_the_cluster(served, champion, cluster, workdir, env):
    """Last in the module: stops what the fixture started (its own stop then finds nothing, and says so)."""
    args = ["--address", cluster.gcs_address]
    stopped = run_leukotune(["serve", "--stop", *args], workdir, env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stopped the Ray Serve application" in stopped.stdout
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{served}/ping", timeout=3)
        except (urllib.error.URLError, OSError):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"{served} still answers after --stop")
    again = run_leukotune(["serve", "--stop", *args], workdir, env)
    assert again.returncode == 1 and "nothing to stop" in again.stdout
