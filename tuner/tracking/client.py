"""MLflow at the edge: one parent run per study, one nested child run per trial, all written by the driver.

Why not Ray's MLflowLoggerCallback: it logs flat runs (no parent) and leaves runs RUNNING when the driver dies.
Here every child run is found again by its trial id, so a resumed study reuses it; each epoch is logged once
(steps already in MLflow are skipped); and any run still open when the study stops is closed as KILLED.
"""
from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterable

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from leukotune.tuner.tracking.postgres import connection_problem, is_postgres

TAG_STUDY = "leukotune.study_id"
TAG_TRIAL = "leukotune.trial_id"
TAG_KIND = "leukotune.kind"
TAG_MODEL_URI = "leukotune.model_uri"
TAG_FINGERPRINT = "leukotune.data_fingerprint"
TAG_CODE_VERSION = "leukotune.code_version"
TAG_EARLY_STOP = "leukotune.stopped_early"
TAG_ORPHANED = "leukotune.orphaned"
TAG_DEVICE = "leukotune.device"  # what the trial trained on: cpu, or cuda:0 (NVIDIA H200)
TAG_PIPELINE = "leukotune.pipeline"  # how batches reached it: device (resident split) or loader
TAG_NODE = "leukotune.node_id"  # the Ray node it trained on
PARENT_TAG = "mlflow.parentRunId"
# MLflow 3's UI picks an experiment's view from this tag: without it a study opens in the GenAI view
# ("Evaluation runs"); `custom_model_development` is its model-training kind.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
# MLflow 3.17's UI itself takes its view from the `workflowType` URL parameter (else the browser's last choice of
# its GenAI / Model training switch, GenAI at first), so the links leukotune prints carry it.
TRAINING_VIEW_QUERY = "workflowType=machine_learning"


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be reached; raised before any training starts."""


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else SQLite under the working directory (the embedded default)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root = Path.cwd() / ".leukotune"
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def resolve_tracking_uri(configured: str | None) -> str:
    return configured or default_tracking_uri()


def training_view_url(server: str, experiment_id: str) -> str:
    """The experiment's runs table in the UI's model-training view (not its GenAI view)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW_QUERY}"


def redact(text: str) -> str:
    """Hide credentials before logging or printing: `https://user:secret@host` -> `https://user:***@host`, and a
    `password=` field (a database URI's `?password=`, a libpq `key=value` string) -> `password=***`."""
    # The password runs to the first `@`, as SQLAlchemy reads a database URI: it may hold `/` or `:`.
    text = re.sub(r"(://[^:/@\s]*):[^@\s]+@", r"\1:***@", str(text))
    return re.sub(r"(?i)(\bpassword=)[^&\s]+", r"\1***", text)


def request_failure(exc: Exception, uri: str) -> str:
    """A refused or failed MLflow request as one line, credentials hidden; 401/403 say which credentials MLflow
    reads."""
    text = redact(str(getattr(exc, "message", exc))).strip()
    first = text.splitlines()[0][:300] if text else type(exc).__name__
    if "401" in first or "403" in first or "not authenticated" in text:
        return (f"MLflow at {redact(uri)} refused the request (authentication): set MLFLOW_TRACKING_USERNAME and "
                f"MLFLOW_TRACKING_PASSWORD")
    return f"MLflow at {redact(uri)}: {first}"


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail within seconds when an HTTP tracking server or a PostgreSQL store does not answer, or the database
    refuses the password or does not exist, naming the (redacted) URI."""
    if is_postgres(uri):
        problem = connection_problem(uri, timeout_s)
        if problem:
            raise TrackingUnavailable(f"MLflow tracking store {redact(uri)}: {redact(problem)}")
        return
    if not uri.startswith(("http://", "https://")):
        if uri.startswith("sqlite:///"):
            folder = Path(uri[len("sqlite:///"):]).parent
            if not os.access(folder, os.W_OK):
                raise TrackingUnavailable(f"MLflow SQLite folder {folder} is not writable")
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            if response.status != 200:
                raise TrackingUnavailable(f"MLflow server at {redact(uri)} answered HTTP {response.status} on /health")
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingUnavailable(
            f"MLflow tracking server at {redact(uri)} is unreachable ({getattr(exc, 'reason', exc)}); start it with "
            f"`leukotune mlflow-server` or set MLFLOW_TRACKING_URI") from exc


def with_retries(call: Callable[[], Any], what: str, attempts: int = 8, first_delay_s: float = 0.5,
                 log: Callable[[str], None] = print) -> Any:
    """Run `call`, retrying with exponential backoff: a restarting tracking server must not lose a metric."""
    delay = first_delay_s
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except (MlflowException, OSError, ConnectionError) as exc:
            if attempt == attempts:
                raise
            log(f"MLflow {what} failed ({type(exc).__name__}: {redact(str(exc))[:160]}); retry {attempt} in {delay:.1f}s")
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


def code_version() -> str:
    """`<version>+<commit>` of the code running here; in a job `leukotune submit` started, what it shipped (the job's
    copy of the code has no .git to ask)."""
    shipped = os.environ.get("LEUKOTUNE_CODE_VERSION")
    if shipped:
        return shipped
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""

    try:
        package = version("leukotune")
    except PackageNotFoundError:
        package = "unknown"
    return f"{package}+{sha}" if sha else package


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def search_all_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str,
                    order_by: list[str] | None = None, page_size: int = 1000,
                    log: Callable[[str], None] = print) -> list:
    """Every run of the experiments matching `filter_string`, page by page: one search returns at most a page."""
    runs, token = [], None
    while True:
        page = with_retries(lambda token=token: client.search_runs(
            experiment_ids, filter_string, max_results=page_size, order_by=order_by, page_token=token),
            "search runs", log=log)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


class Tracker:
    """Thin wrapper over MlflowClient with retries, batching and redaction."""

    def __init__(self, uri: str, experiment: str, log: Callable[[str], None] = print):
        self.uri = uri
        self.log = log
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = with_retries(lambda: self._ensure_experiment(experiment), "get experiment", log=log)

    def _ensure_experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND_TRAINING:  # made before this tag, or by hand
                self.client.set_experiment_tag(found.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND_TRAINING)
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):
            # Keep artifacts beside the database, not in a stray ./mlruns of whichever folder a worker started in.
            location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location,
                                                 tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # Another study on the same store created it between our read and our create: use theirs.
            return self.client.get_experiment_by_name(name).experiment_id

    def find_runs(self, filter_string: str, page_size: int = 1000) -> list:
        """Every run of the experiment matching `filter_string` (a study may hold thousands)."""
        return search_all_runs(self.client, [self.experiment_id], filter_string, page_size=page_size, log=self.log)

    def create_run(self, name: str, tags: dict[str, str]) -> str:
        run = with_retries(lambda: self.client.create_run(self.experiment_id, run_name=name, tags=tags),
                           "create run", log=self.log)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any], new_run: bool = False) -> None:
        """Log the params the run does not hold yet (MLflow params are write-once); `new_run` skips reading it."""
        items = [Param(k, redact(str(v))[:6000]) for k, v in flatten(params).items()]
        if not new_run:
            existing = with_retries(lambda: self.client.get_run(run_id).data.params, "read run", log=self.log)
            items = [p for p in items if p.key not in existing]
        for chunk in _chunks(items, 100):
            with_retries(lambda chunk=chunk: self.client.log_batch(run_id, params=chunk), "log params", log=self.log)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        items = [RunTag(k, redact(str(v))) for k, v in tags.items()]
        with_retries(lambda: self.client.log_batch(run_id, tags=items), "set tags", log=self.log)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for chunk in _chunks(items, 1000):
            with_retries(lambda chunk=chunk: self.client.log_batch(run_id, metrics=chunk), "log metrics", log=self.log)

    def last_step(self, run_id: str, key: str) -> int:
        history = with_retries(lambda: self.client.get_metric_history(run_id, key), "read metric history",
                               log=self.log)
        return max((m.step for m in history), default=0)

    def log_json(self, run_id: str, payload: Any, artifact_file: str) -> None:
        with_retries(lambda: self.client.log_dict(run_id, payload, artifact_file), "log artifact", log=self.log)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        with_retries(lambda: self.client.log_text(run_id, text, artifact_file), "log artifact", log=self.log)

    def log_figure(self, run_id: str, figure, artifact_file: str) -> None:
        with_retries(lambda: self.client.log_figure(run_id, figure, artifact_file), "log figure", log=self.log)

    def end_run(self, run_id: str, status: str) -> None:
        with_retries(lambda: self.client.set_terminated(run_id, status), "end run", log=self.log)

    def status(self, run_id: str) -> str:
        return with_retries(lambda: self.client.get_run(run_id).info.status, "read run", log=self.log)


def numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The metrics worth a time series: numbers our loop reported, not Tune's bookkeeping."""
    skip = {"epoch", "training_iteration", "timestamp", "time_this_iter_s", "time_total_s", "pid",
            "time_since_restore", "iterations_since_restore", "done"}
    return {k: float(v) for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip
            and not k.startswith(("config/", "node_ip", "hostname"))}


class BackgroundLogger:
    """One worker thread for the slow MLflow work (a trial's plots and closing, model exports), so the Tune event
    loop never waits on it; tasks run in the order they were submitted, and a failed one is reported without
    stopping the rest."""

    def __init__(self, log: Callable[[str], None] = print):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-log")
        self.log = log

    def submit(self, fn: Callable, *args) -> None:
        self._pool.submit(self._guard, fn, *args)

    def _guard(self, fn: Callable, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - one failed upload must not stop the others; it is reported
            self.log(f"WARNING: MLflow background task {getattr(fn, '__name__', fn)} failed: {redact(str(exc))}")

    def drain(self) -> None:
        """Return once every task submitted so far has run (one worker: a no-op queued now runs after them all)."""
        self._pool.submit(lambda: None).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
