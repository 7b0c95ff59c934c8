"""`leukotune promote`: register the best finished trial's model and point an alias (default `champion`) at it.

MLflow 3 aliases, not the deprecated stages. The choice is deterministic (metric, then the earliest start, then
run id), a run is registered at most once (its existing version is reused), and a model below the bar is refused.
The version carries its calibration and operating point (`operating_point.py`) twice: as version tags, which
`leukotune predict` and `evaluate` read, and inside the registered model itself, which is all `mlflow models serve`
and `leukotune serve` see. A calibrated decision is registered from a copy of the trial's LoggedModel with the
temperature and threshold in its metadata (`serving/calibrated_copy.py`); the version's `leukotune.trained_model`
tag names the trial's own model. A registered model is never rewritten, so an operating point is never moved on a
version: promoting an already registered run with a target that moves its point registers a new version (the old
one keeps its point); without a target, or with the one it has, the run's newest version is reused.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from leukotune.tuner.metrics import metric_on_test, ranking_key
from leukotune.tuner.evaluation.calibration import TAG_CALIBRATION, TAG_TEMPERATURE, TAG_THRESHOLD
from leukotune.tuner.registry.model_card import (
    MODEL_CARD_FILE,
    held_out_tags,
    missing_test_reason,
    model_card,
    version_description,
)
from leukotune.tuner.registry.operating_point import Decision, OperatingPointError, decide, stored_point
from leukotune.tuner.registry.model_uris import TAG_TRAINED_MODEL, logged_model_id, process_tracking_uri
from leukotune.tuner.serving.image_model import DEFAULT_TEMPERATURE, DEFAULT_THRESHOLD
from leukotune.tuner.tracking.client import (
    PARENT_TAG,
    TAG_FINGERPRINT,
    TAG_KIND,
    TAG_MODEL_URI,
    TAG_STUDY,
    TAG_TRIAL,
    check_reachable,
    redact,
)
from leukotune.tuner.tracking.datasets import dataset_tags

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

DEFAULT_METRIC = "best_val_f1_weighted"
DEFAULT_ALIAS = "champion"
BEST_EPOCH_FILE = "best_epoch.json"
# What a trial's LoggedModel decides with (tracking/artifacts.py logs it so): no copy is needed for this point.
AS_TRAINED = (DEFAULT_TEMPERATURE, DEFAULT_THRESHOLD)


class ExperimentNotFoundError(LookupError):
    """--experiment names no experiment on the tracking server; the message lists the ones there."""


@dataclass(frozen=True)
class Candidate:
    """A finished trial run with a logged model and a finite value of the metric."""

    run_id: str
    run_name: str
    value: float
    start_time: int
    model_uri: str


@dataclass
class Promotion:
    """What `promote` did, or why it refused (then `refused` holds the reason and nothing was registered)."""

    model_name: str
    alias: str
    metric: str
    candidate: Candidate | None = None
    version: str | None = None
    created: bool = False
    previous_version: str | None = None
    refused: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    gate_metric: str | None = None  # what --min/--max judged: the test counterpart of `metric` by default
    gate_value: float | None = None
    card: str | None = None  # the model card (markdown) of a newly created version
    decision: Decision | None = None  # the temperature and threshold set on the version (None: left as they were)
    previous_point: str | None = None  # the point of the run's version a targeted promote registered a new one over
    previous_run_version: str | None = None  # that version (it keeps its point)
    source: str | None = None  # what the version registers: the trial's LoggedModel, or its calibrated copy
    kept_point: dict[str, str] = field(default_factory=dict)  # an existing version's tags, when left as they were

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}@{self.alias}"


def default_model_name(experiment: str) -> str:
    """`leukotune-<experiment>`; an experiment already named leukotune-... is not prefixed twice."""
    return experiment if experiment.startswith("leukotune-") else f"leukotune-{experiment}"


def find_candidates(client: MlflowClient, experiment_id: str, metric: str) -> list[Candidate]:
    """Every FINISHED trial run of the experiment that logged a model and the metric (NaN counts as missing)."""
    filter_string = f"tags.`{TAG_KIND}` = 'trial' and attributes.status = 'FINISHED'"
    candidates, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        for run in page:
            value = run.data.metrics.get(metric)
            model_uri = run.data.tags.get(TAG_MODEL_URI)
            if model_uri and value is not None and math.isfinite(value):
                candidates.append(Candidate(run.info.run_id, run.info.run_name or run.info.run_id, float(value),
                                            int(run.info.start_time or 0), model_uri))
        token = page.token
        if not token:
            return candidates


def rank(candidates: list[Candidate], mode: str = "max") -> list[Candidate]:
    """Best first; ties go to the earliest start, then the smaller run id, so two calls always agree."""
    return sorted(candidates, key=lambda c: (*ranking_key(c.value, mode), c.start_time, c.run_id))


def threshold_problem(value: float, metric: str, minimum: float | None, maximum: float | None) -> str | None:
    """Why `value` does not clear the bar, or None when it does."""
    if minimum is not None and value < minimum:
        return f"the best {metric} is {value:.4f}, below --min {minimum:g}"
    if maximum is not None and value > maximum:
        return f"the best {metric} is {value:.4f}, above --max {maximum:g}"
    return None


def data_fingerprint(client: MlflowClient, run: Run) -> str | None:
    """The trial run's dataset fingerprint tag, else its study (parent) run's."""
    if run.data.tags.get(TAG_FINGERPRINT):
        return run.data.tags[TAG_FINGERPRINT]
    parent_id = run.data.tags.get(PARENT_TAG)
    if parent_id:
        return client.get_run(parent_id).data.tags.get(TAG_FINGERPRINT) or None
    return None


def best_epoch_metrics(client: MlflowClient, run: Run) -> dict[str, float]:
    """Metrics of the epoch whose weights were logged (best_epoch.json), else the run's latest values."""
    try:
        with tempfile.TemporaryDirectory(prefix="leukotune-promote-") as tmp:
            path = client.download_artifacts(run.info.run_id, BEST_EPOCH_FILE, tmp)
            with open(path) as handle:
                metrics = json.load(handle).get("metrics", {})
    except Exception:  # noqa: BLE001 - an older run without the file still gets its latest metrics
        metrics = {}
    chosen = metrics or run.data.metrics
    return {k: float(v) for k, v in chosen.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def version_tags(client: MlflowClient, run: Run, candidate: Candidate, metric: str,
                 experiment: str) -> dict[str, str]:
    """Provenance on the model version: what was optimised, the value, the data, the study and trial."""
    tags = {"leukotune.experiment": experiment, "leukotune.run_id": candidate.run_id,
            "leukotune.metric": metric, "leukotune.metric_value": f"{candidate.value:.6g}",
            TAG_FINGERPRINT: data_fingerprint(client, run) or "unknown", **dataset_tags(run)}
    for key in (TAG_STUDY, TAG_TRIAL):
        if run.data.tags.get(key):
            tags[key] = run.data.tags[key]
    for key, value in sorted(best_epoch_metrics(client, run).items()):
        tags[f"metric.{key}"] = f"{value:.6g}"
    return tags


def existing_version(client: MlflowClient, model_name: str, run_id: str) -> ModelVersion | None:
    """The newest version registered from this run, if any (promoting twice must not add a version)."""
    versions = client.search_model_versions(f"name = '{_quote(model_name)}' and run_id = '{run_id}'")
    return max(versions, key=lambda v: int(v.version)) if versions else None


def _quote(text: str) -> str:
    return text.replace("'", "\\'")


def ensure_registered_model(client: MlflowClient, model_name: str, experiment: str) -> None:
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(
            model_name, description=f"ALL-vs-hem cell classifiers promoted from the leukotune experiment "
                                    f"'{experiment}' (`leukotune promote`).")


def current_alias_version(client: MlflowClient, model_name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def promote(tracking_uri: str, experiment: str, metric: str = DEFAULT_METRIC, mode: str = "max",
            minimum: float | None = None, maximum: float | None = None, alias: str = DEFAULT_ALIAS,
            model_name: str | None = None, log: Callable[[str], None] = print,
            gate_metric: str | None = None, sensitivity: float | None = None,
            specificity: float | None = None) -> Promotion:
    """Pick the best trial model of `experiment` by `metric` (validation), judge it on `gate_metric` (default: the
    test counterpart of `metric`), choose its operating point on validation (`sensitivity` or `specificity`
    target, else 0.5), register it (once) and alias it."""
    check_reachable(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments(max_results=200))
        raise ExperimentNotFoundError(f"no experiment named {experiment!r} at {redact(tracking_uri)}; "
                                      f"existing: {', '.join(names) or 'none'}")
    result = Promotion(model_name or default_model_name(experiment), alias, metric)
    ranked = rank(find_candidates(client, found.experiment_id, metric), mode)
    if not ranked:
        result.refused = (f"no FINISHED trial run with a logged model and metric {metric!r} in experiment "
                          f"{experiment!r}")
        return result
    best = result.candidate = ranked[0]
    log(f"best of {len(ranked)} finished trial run(s): {best.run_name} ({best.run_id}) {metric} = {best.value:.4f}")
    result.refused = judge_on_gate(client.get_run(best.run_id), result, gate_metric or metric_on_test(metric),
                                   minimum, maximum)
    if result.refused:
        return result
    try:
        result.decision = decide(client, client.get_run(best.run_id), sensitivity, specificity)
    except OperatingPointError as exc:
        result.refused = str(exc)
        return result
    register_and_alias(client, result, experiment, targeted=sensitivity is not None or specificity is not None)
    return result


def judge_on_gate(run: Run, result: Promotion, gate_metric: str, minimum: float | None,
                  maximum: float | None) -> str | None:
    """Why the chosen run is refused on its gate metric (missing, or outside --min/--max), or None."""
    result.gate_metric = gate_metric
    missing = missing_test_reason(run, gate_metric, result.metric)
    if missing:
        return missing
    result.gate_value = float(run.data.metrics[gate_metric])
    problem = threshold_problem(result.gate_value, gate_metric, minimum, maximum)
    if problem and gate_metric != result.metric:
        return f"{problem} (its {result.metric} is {result.candidate.value:.4f}; the gate is the test score)"
    return problem


def register_and_alias(client: MlflowClient, result: Promotion, experiment: str, targeted: bool = False) -> None:
    """Create the version (unless this run already has one; a `targeted` promote that moves its operating point
    creates another), then move the alias onto it."""
    best = result.candidate
    ensure_registered_model(client, result.model_name, experiment)
    version = existing_version(client, result.model_name, best.run_id)
    decision = result.decision
    if version is not None and targeted and decision and _moved(version.tags, decision):
        result.previous_point = stored_point(version.tags) or "none"
        result.previous_run_version = str(version.version)
        version = None
    if version is None:
        run = client.get_run(best.run_id)
        result.tags = version_tags(client, run, best, result.metric, experiment) | held_out_tags(run)
        result.tags |= decision.tags() if decision else {}
        result.source = served_source(client, best, decision)
        result.tags[TAG_TRAINED_MODEL] = best.model_uri
        version = create_version(client, result, best)
        result.created = True
        store_card(client, result, run, str(version.version), result.tags)
    else:
        result.decision, result.kept_point, result.source = None, dict(version.tags), version.source
    result.version = str(version.version)
    result.previous_version = current_alias_version(client, result.model_name, result.alias)
    client.set_registered_model_alias(result.model_name, result.alias, result.version)


def store_card(client: MlflowClient, result: Promotion, run: Run, version: str, tags: dict[str, str]) -> None:
    """Write the version's model card from the records and its `tags`: the run's `model_card.md` and, cut to what
    the registry keeps, the version's description."""
    result.card = model_card(client, run, result.model_name, result.metric, tags, version)
    client.log_text(run.info.run_id, result.card, MODEL_CARD_FILE)
    client.update_model_version(result.model_name, version, description=version_description(result.card))


def _moved(tags: dict[str, str], decision: Decision) -> bool:
    return stored_point(tags) != decision.point.describe() or tags.get(TAG_THRESHOLD) != repr(decision.point.threshold)


def served_source(client: MlflowClient, best: Candidate, decision: Decision | None) -> str:
    """The model a new version registers: the trial's LoggedModel when it decides as trained, else a copy of it with
    the temperature and threshold inside, so that the served champion answers as `leukotune predict` does. An older
    study's `runs:/` model cannot be copied (it is not a LoggedModel) and is registered as it is."""
    point = (decision.temperature, decision.point.threshold) if decision else AS_TRAINED
    if point == AS_TRAINED or logged_model_id(best.model_uri) is None:
        return best.model_uri
    # Imported here: serving/ imports the registry's URI helpers, and this module loads with the registry package.
    from leukotune.tuner.serving.calibrated_copy import log_calibrated_copy

    return log_calibrated_copy(client.tracking_uri, best.model_uri, *point)


def create_version(client: MlflowClient, result: Promotion, best: Candidate) -> ModelVersion:
    """A version from `result.source` (the trial's LoggedModel or its calibrated copy, `models:/<model_id>`; an
    older study's `runs:/<id>/model`), recorded on that LoggedModel too, as `mlflow.register_model` does, so its
    page lists the version."""
    source = result.source or best.model_uri
    model_id = logged_model_id(source)
    with process_tracking_uri(client.tracking_uri):  # the SQLite registry looks the LoggedModel up through these
        version = client.create_model_version(result.model_name, source=source, run_id=best.run_id,
                                              tags=result.tags, model_id=model_id,
                                              description=f"{result.metric} = {best.value:.4f} (run {best.run_id});"
                                                          f" the model card follows")
    if model_id:
        listed = json.loads(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
        listed.append({"name": version.name, "version": version.version})
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(listed)})
    return version


def summary_lines(result: Promotion) -> list[str]:
    """What happened, for the terminal."""
    if result.refused:
        return [f"not promoted: {result.refused}"]
    how = "registered as new version" if result.created else "already registered as version"
    moved = (f" (was version {result.previous_version})"
             if result.previous_version and result.previous_version != result.version else "")
    assert result.candidate is not None
    lines = [f"{how} {result.version} of {result.model_name}; alias @{result.alias} -> version {result.version}{moved}",
             f"operating point moved: version {result.previous_run_version} of run {result.candidate.run_id} keeps "
             f"{result.previous_point!r}" if result.previous_point is not None else
             f"data fingerprint: {result.tags.get(TAG_FINGERPRINT, 'see the version tags')}" if result.created else
             f"version tags unchanged (run {result.candidate.run_id})",
             f"judged on {result.gate_metric} = {result.gate_value:.4f}; ranked by {result.metric} = "
             f"{result.candidate.value:.4f}"]
    if result.created and result.source != result.candidate.model_uri:
        lines.append(f"registered model: {result.source}, the trial's {result.candidate.model_uri} with this "
                     f"temperature and threshold inside (what `mlflow models serve` and `leukotune serve` answer with)")
    if result.card:
        lines.append(f"model card with its reporting checklist: runs:/{result.candidate.run_id}/{MODEL_CARD_FILE} "
                     f"(and the version's description; `leukotune report --model {result.model_uri}` writes it "
                     f"again)")
    if result.decision is not None:
        lines += result.decision.lines()
    elif result.kept_point:
        kept = result.kept_point
        lines.append(f"operating point unchanged: ALL at P(ALL) >= {kept.get(TAG_THRESHOLD, '0.5')} "
                     f"({stored_point(kept) or 'default threshold 0.5'}); give --sensitivity or --specificity to "
                     f"move it")
    return lines + [result.model_uri]


def promotion_json(result: Promotion) -> dict[str, Any]:
    best = result.candidate
    return {"model_uri": None if result.refused else result.model_uri, "model_name": result.model_name,
            "alias": result.alias, "version": result.version, "created": result.created,
            "refused": result.refused, "metric": result.metric, "value": best.value if best else None,
            "gate_metric": result.gate_metric, "gate_value": result.gate_value,
            "run_id": best.run_id if best else None, "source": result.source,
            "trained_model": best.model_uri if best else None,
            "operating_point": _point_json(result), "previous_operating_point": result.previous_point}


def _point_json(result: Promotion) -> dict[str, Any] | None:
    if result.decision is not None:
        return {**result.decision.to_json(), "changed": True}
    if result.kept_point:
        kept = result.kept_point
        return {"temperature": float(kept.get(TAG_TEMPERATURE, 1.0)), "threshold": float(kept.get(TAG_THRESHOLD, 0.5)),
                "operating_point": stored_point(kept), "calibration": kept.get(TAG_CALIBRATION), "changed": False}
    return None
