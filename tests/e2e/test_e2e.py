"""The whole path on one machine: a two-node Ray cluster with token auth, an MLflow server, the smoke study
submitted as a Ray Job, promotion to the registry, prediction from it, and the MLflow UI in headless Chromium.

`make e2e` runs it (CI too). Everything it starts is stopped, whatever fails.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from e2e.servers import Background, RayCluster, free_port, ray_env, start, start_ray_head, wait_http, write_token

from conftest import REPO_ROOT

pytestmark = pytest.mark.e2e

SAMPLE = REPO_ROOT.parent / "shared" / "cnmc-sample"
ARTIFACTS = REPO_ROOT / "e2e-artifacts"
LEUKOTUNE = str(Path(sys.executable).parent / "leukotune")
EXPERIMENT = "leukotune-smoke"  # studies/smoke.yaml's tracking.experiment
MODEL_URI = f"models:/{EXPERIMENT}@champion"
METRIC = "best_val_f1_weighted"  # the smoke study's metric, as its trials and the study run log it
TRAINING_VIEW = "workflowType=machine_learning"  # MLflow 3.17's UI opens its GenAI view without it
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


class Stack:
    """The running servers and what a user's shell would have set to reach them."""

    def __init__(self, cluster: RayCluster, mlflow: Background, mlflow_url: str, user_env: dict[str, str],
                 folder: Path):
        self.cluster, self.mlflow, self.mlflow_url, self.user_env, self.folder = (cluster, mlflow, mlflow_url,
                                                                                 user_env, folder)

    def leukotune(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([LEUKOTUNE, *args], cwd=REPO_ROOT, env=self.user_env, capture_output=True, text=True,
                              timeout=timeout)

    def ray_state(self, kind: str, **query: str) -> list[dict]:
        """Ray's state API (`/api/v0/<kind>`), authenticated with the cluster's token."""
        token = Path(self.user_env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
        url = f"{self.cluster.dashboard_url}/api/v0/{kind}?{urllib.parse.urlencode({'limit': '1000', **query})}"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["data"]["result"]["result"]

    def rest(self, path: str, **query: str) -> dict:
        url = f"{self.mlflow_url}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read())


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e")
    token_file = write_token(folder)
    env = ray_env(token_file)
    cluster = start_ray_head(folder, env, num_cpus=1)
    mlflow = None
    try:
        cluster.add_node(num_cpus=1)  # a second raylet: trials are spread over two nodes
        cluster.wait_for_nodes(2)
        port = free_port()
        mlflow = start("mlflow", [LEUKOTUNE, "mlflow-server", "--port", str(port), "--workers", "1"],
                       {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}, folder, cwd=folder)
        mlflow_url = f"http://127.0.0.1:{port}"
        wait_http(f"{mlflow_url}/health", process=mlflow)
        # The user's shell: the token file (no RAY_AUTH_MODE) and the tracking server, nothing else of Ray's.
        user_env = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
        user_env["MLFLOW_TRACKING_URI"] = mlflow_url
        yield Stack(cluster, mlflow, mlflow_url, user_env, folder)
    finally:
        if mlflow is not None:
            mlflow.stop()
        cluster.stop()
        logs = ARTIFACTS / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for log in folder.glob("*.log"):
            shutil.copy(log, logs / log.name)


@pytest.fixture(scope="module")
def submitted(stack) -> subprocess.CompletedProcess:
    # storage_path plays the shared volume of a real cluster: outside the job's temporary working_dir.
    return stack.leukotune("submit", "--address", stack.cluster.dashboard_url, "--config", "studies/smoke.yaml",
                           "--set", "tune.num_samples=2", "--set", "train.epochs=2",
                           "--set", f"storage_path={stack.folder / 'shared' / 'runs'}", "--follow", timeout=480)


def test_submit_follow_runs_the_study_on_the_cluster(stack, submitted):
    output = submitted.stdout + submitted.stderr
    (ARTIFACTS).mkdir(exist_ok=True)
    (ARTIFACTS / "submit.log").write_text(output)
    assert submitted.returncode == 0, output[-4000:]
    job_id = re.search(r"submitted job: (\S+)", submitted.stdout).group(1)
    assert "leaderboard" in submitted.stdout and f"job {job_id}: SUCCEEDED" in submitted.stderr
    status = stack.leukotune("jobs", "status", job_id, "--address", stack.cluster.dashboard_url)
    assert status.returncode == 0 and "status:     SUCCEEDED" in status.stdout


def test_trials_ran_on_both_nodes(stack, submitted):
    actors = stack.ray_state("actors", detail="1")
    trial_nodes = {a["node_id"] for a in actors if "tune_trial" in a["class_name"] or "ImplicitFunc" in a["class_name"]}
    assert len(trial_nodes) == 2, [(a["class_name"], a["node_id"]) for a in actors]


def test_every_trial_is_a_finished_run_in_mlflow(stack, submitted):
    experiment = stack.rest("experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"]
    runs = _runs(stack, experiment["experiment_id"])
    trials = [r for r in runs if _tag(r, "leukotune.kind") == "trial"]
    assert len(trials) == 2 and all(r["info"]["status"] == "FINISHED" for r in trials)
    assert all(_tag(r, "leukotune.model_uri") for r in trials)


def test_promote_then_predict_from_the_registry(stack, submitted, tmp_path):
    promoted = stack.leukotune("promote", "--experiment", EXPERIMENT)
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.strip().splitlines()[-1] == MODEL_URI
    again = stack.leukotune("promote", "--experiment", EXPERIMENT)
    assert again.returncode == 0 and "already registered as version 1" in again.stdout
    refused = stack.leukotune("promote", "--experiment", EXPERIMENT, "--min", "1.01")
    assert refused.returncode == 1 and "below --min" in refused.stderr

    corrupt = tmp_path / "corrupt.bmp"
    corrupt.write_bytes(b"BM broken")
    predicted = stack.leukotune("predict", "--model", MODEL_URI, str(SAMPLE), str(corrupt), "--tta", "--json")
    assert predicted.returncode == 0, predicted.stderr
    result = json.loads(predicted.stdout)
    (ARTIFACTS / "predictions.json").write_text(predicted.stdout)
    assert result["classified"] == 60 and result["errors"] == 1 and result["version"].startswith("version 1")
    assert {row["class"] for row in result["predictions"] if "class" in row} <= {"all", "hem"}


def test_mlflow_ui_lists_the_runs(stack, submitted, tmp_path):
    browser = _require_chromium()
    experiment_id = stack.rest("experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"]["experiment_id"]
    runs = _runs(stack, experiment_id)
    parent = next(r for r in runs if _tag(r, "leukotune.kind") == "study")
    trials = [r for r in runs if _tag(r, "leukotune.kind") == "trial"]
    ARTIFACTS.mkdir(exist_ok=True)

    # The experiment's runs page in the training view: the study's run, its trials nested (collapsed), all counted.
    page = f"{stack.mlflow_url}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW}"
    text = _page(browser, page, tmp_path, "mlflow-runs")
    assert "Model registry" in text and "Evaluation runs" not in text, text[:2000]  # the training view's menu
    assert parent["info"]["run_name"] in text and f"{len(runs)} matching runs" in text, text[:2000]

    # Sorted by the study metric, as a user sorts the table: the winner first, every run naming its dataset.
    page = (f"{stack.mlflow_url}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW}"
            f"&orderByKey=metrics.%60{METRIC}%60&orderByAsc=false")
    text = _page(browser, page, tmp_path, "mlflow-runs-by-metric")
    assert f"Sort: {METRIC}" in text and "synthetic-cnmc-train" in text, text[:2000]
    winner = f"trial-{_tag(parent, 'leukotune.best_trial_id')}"
    others = [t["info"]["run_name"] for t in trials if t["info"]["run_name"] != winner]
    assert all(text.index(winner) < text.index(name) for name in others), text[:2000]

    # Each trial's own page: its name and metrics, not an "Evaluation"; then its plots, drawn.
    for number, trial in enumerate(trials):
        url = f"{stack.mlflow_url}/#/experiments/{experiment_id}/runs/{trial['info']['run_id']}?{TRAINING_VIEW}"
        text = _visible_text(_chromium(browser, url, tmp_path, "--dump-dom"))
        assert trial["info"]["run_name"] in text and METRIC in text and "Evaluations" not in text, text[:2000]
        for plot in ("confusion_matrix", "learning_curves"):
            url = (f"{stack.mlflow_url}/#/experiments/{experiment_id}/runs/{trial['info']['run_id']}/artifacts/"
                   f"plots/{plot}.png?{TRAINING_VIEW}")
            dom = _chromium(browser, url, tmp_path, "--dump-dom")
            assert f'<img alt="plots/{plot}.png"' in dom, _visible_text(dom)[:2000]
            if number == 0:
                _page(browser, url, tmp_path, f"mlflow-trial-{plot}")


def test_mlflow_ui_shows_the_promoted_model_with_its_data(stack, submitted, tmp_path):
    browser = _require_chromium()
    promoted = stack.leukotune("promote", "--experiment", EXPERIMENT)  # registers once; a second call reuses it
    assert promoted.returncode == 0, promoted.stderr
    version = stack.rest("registered-models/alias", name=EXPERIMENT, alias="champion")["model_version"]
    experiment_id = stack.rest("experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"]["experiment_id"]
    parent = next(r for r in _runs(stack, experiment_id) if _tag(r, "leukotune.kind") == "study")
    page = f"{stack.mlflow_url}/#/models/{EXPERIMENT}/versions/{version['version']}?{TRAINING_VIEW}"
    text = _page(browser, page, tmp_path, "mlflow-model-version")
    assert f"Version {version['version']}" in text and "champion" in text, text[:2000]
    # The version names the data it was trained on, by the same digest as the study's dataset inputs.
    assert "leukotune.dataset_digest" in text and _tag(parent, "leukotune.data_fingerprint") in text, text[:2000]


def _require_chromium() -> str:
    browser = _find_chromium()
    if browser is None:
        message = "Chromium not found (install Debian's `chromium`: apt-get install -y chromium)"
        # CI installs it in .ci/run: there a missing browser is a failure, not a reason to skip the UI check.
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return browser


def _page(browser: str, url: str, tmp_path: Path, name: str) -> str:
    """A page's screenshot and visible text, both kept in e2e-artifacts/ (CI uploads them); returns the text."""
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = _chromium(browser, url, tmp_path, "--screenshot", tmp_path / f"{name}.png")
    assert screenshot.stat().st_size > 20_000  # a rendered page, not a blank one
    shutil.copy(screenshot, ARTIFACTS / screenshot.name)
    text = _visible_text(_chromium(browser, url, tmp_path, "--dump-dom"))
    (ARTIFACTS / f"{name}.txt").write_text(text)
    return text


def _chromium(browser: str, url: str, tmp_path: Path, mode: str, screenshot: Path | None = None):
    """Headless Chromium on `url`: the DOM after scripts ran (--dump-dom), or a screenshot file.

    MLflow's UI is a React app: the virtual time budget lets it fetch and render before the dump is taken.
    """
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,900",
             "--virtual-time-budget=15000"]
    flags.append(f"--screenshot={screenshot}" if screenshot else mode)
    done = subprocess.run([browser, *flags, url], capture_output=True, text=True, timeout=120)
    if screenshot:
        assert screenshot.exists(), done.stderr[-2000:]
        return screenshot
    return done.stdout


def _visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def _runs(stack: Stack, experiment_id: str) -> list[dict]:
    request = urllib.request.Request(f"{stack.mlflow_url}/api/2.0/mlflow/runs/search", method="POST",
                                     data=json.dumps({"experiment_ids": [experiment_id],
                                                      "max_results": 100}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read()).get("runs", [])


def _tag(run: dict, key: str) -> str | None:
    return next((t["value"] for t in run["data"].get("tags", []) if t["key"] == key), None)


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
