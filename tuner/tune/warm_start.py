"""A new study that starts from what earlier ones learned (`tune.warm_start: STUDY_ID_OR_EXPERIMENT`).

The earlier study's finished trials are read from MLflow (their parameters and their score under this study's
metric, as recorded: the last reported value, which is what Tune told the searcher), fitted to this study's space
and handed to the Optuna study inside the searcher before the first new trial. TPE counts them among its startup
trials, so a warm-started study models from its first trial.

A trial fits when every parameter this study samples has a value inside its distribution (the earlier study's
fixed value stands in for one it did not sample), and every train setting this study fixes had that value there
too: a trial trained for 2 epochs says little about the same point trained for 20. The others are counted, each
with its reason. Data that differ (another fingerprint, other data settings) do not skip trials, but are said,
because the earlier scores were measured on other data.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from mlflow.tracking import MlflowClient

from leukotune.tuner.compat import optuna_study_of
from leukotune.tuner.config import ConfigError, StudyConfig
from leukotune.tuner.tracking.client import TAG_TRIAL, resolve_tracking_uri
from leukotune.tuner.tracking.study_records import (
    StudyNotFoundError,
    StudyRecord,
    finished_trial_runs,
    read_study,
    study_runs_named,
)
from leukotune.tuner.tune.differences import changes
from leukotune.tuner.tune.space import applies, distribution_of

# Settings that change how a trial trains, not what it learns: a difference in them does not make a score foreign.
SCORE_NEUTRAL = frozenset({"pipeline", "compile", "stop_on_nan"})
# The parent run's tags that say where a warm-started study began.
TAG_SOURCE = "leukotune.warm_start.source"
TAG_STUDIES = "leukotune.warm_start.studies"
TAG_GIVEN = "leukotune.warm_start.given"
TAG_SKIPPED = "leukotune.warm_start.skipped"
TAG_DATA_CHANGED = "leukotune.warm_start.data_changed"
USER_ATTR_RUN = "leukotune.warm_start_run"


@dataclass(frozen=True)
class EarlierTrial:
    study_id: str
    trial_id: str
    run_id: str
    params: dict[str, Any]  # as this study's searcher samples them: only the parameters that apply
    value: float


@dataclass
class WarmStart:
    """What a warm start found: the trials handed to the searcher, those skipped and why, and whether the data
    differ from the earlier studies'."""

    source: str
    studies: list[str]
    given: list[EarlierTrial] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run id, reason)
    data_notes: list[str] = field(default_factory=list)  # one per earlier study whose data differ

    def reasons(self) -> Counter:
        return Counter(reason.split(":")[0] for _, reason in self.skipped)

    def lines(self) -> list[str]:
        counted = "; ".join(f"{n} {reason}" for reason, n in self.reasons().most_common())
        found = [f"warm start from {self.source} ({', '.join(self.studies)}): {len(self.given)} earlier trial(s) "
                 f"given to the searcher" + (f", {len(self.skipped)} skipped ({counted})" if self.skipped else "")]
        return found + [f"warm start: {note}; their scores were measured on other data" for note in self.data_notes]

    def tags(self) -> dict[str, str]:
        return {TAG_SOURCE: self.source, TAG_STUDIES: ",".join(self.studies), TAG_GIVEN: str(len(self.given)),
                TAG_SKIPPED: str(len(self.skipped)), TAG_DATA_CHANGED: str(bool(self.data_notes)).lower()}

    def record(self) -> dict[str, Any]:
        """The whole account, logged to the new parent run as `warm_start.json` (tracking/parent_run.py)."""
        return {"source": self.source, "studies": self.studies, "data_notes": self.data_notes,
                "given": [vars(trial) for trial in self.given],
                "skipped": [{"run_id": run_id, "reason": reason} for run_id, reason in self.skipped]}


def gather_warm_start(study: StudyConfig, space: dict[str, Any], fingerprint: str,
                      log: Callable[[str], None] = print) -> WarmStart:
    """Read the earlier studies `tune.warm_start` names and fit their finished trials to `space`; ConfigError when
    it names nothing in the tracking store."""
    client = MlflowClient(tracking_uri=resolve_tracking_uri(study.tracking.tracking_uri))
    source = str(study.tune.warm_start)
    try:
        records = [read_study(client, run) for run in study_runs_named(client, source)]
    except StudyNotFoundError as exc:
        raise ConfigError(f"tune.warm_start={source}: {exc}") from None
    warm = WarmStart(source=source, studies=[record.study_id for record in records])
    for record in records:
        note = data_difference(record, study, fingerprint)
        if note:
            warm.data_notes.append(note)
        for run in finished_trial_runs(client, record):
            fitted = fit_trial(run.data.params, run.data.metrics.get(study.tune.metric), record, study, space)
            if isinstance(fitted, str):
                warm.skipped.append((run.info.run_id, fitted))
            else:
                warm.given.append(EarlierTrial(record.study_id, run.data.tags.get(TAG_TRIAL, ""), run.info.run_id,
                                               *fitted))
    for line in warm.lines():
        log(line)
    return warm


def data_difference(record: StudyRecord, study: StudyConfig, fingerprint: str) -> str | None:
    """Why the earlier study's data are not this study's (another fingerprint, other data settings), else None."""
    said = []
    if record.fingerprint and record.fingerprint != fingerprint:
        said.append(f"data fingerprint {record.fingerprint[:12]} -> {fingerprint[:12]}")
    said += [change.describe() for change in changes({"data": record.config.get("data", {})},
                                                     {"data": study.data.to_dict()})]
    return f"study {record.study_id} ran on other data ({', '.join(said)})" if said else None


def fit_trial(params: dict[str, str], value: float | None, record: StudyRecord, study: StudyConfig,
              space: dict[str, Any]) -> tuple[dict[str, Any], float] | str:
    """(the point as this study's searcher would sample it, its score), or the reason it does not fit.

    MLflow keeps params as text, so values are matched as text: a choice by its printed form, a range by its
    number. The earlier trial's settings are its study's fixed train values with its own sampled ones on top.
    """
    if value is None or not math.isfinite(value):
        return f"no score: {study.tune.metric} is not recorded as a finite number"
    earlier = {key: str(v) for key, v in (record.config.get("train") or {}).items()} | params
    fixed = study.train.to_dict()
    point: dict[str, Any] = {}
    typed = dict(fixed)  # conditions and dependent limits read the values chosen above
    for name, spec in space.items():
        if not applies(spec, typed):
            continue
        if name not in earlier:
            return f"missing parameter: {name} has no value in the earlier trial"
        fitted = fit_value(earlier[name], distribution_of(name, spec, typed))
        if fitted is None:
            return f"outside the space: {name}={earlier[name]} is not in {describe(distribution_of(name, spec, typed))}"
        point[name] = typed[name] = fitted
    for name, wanted in fixed.items():
        if name in space or name in SCORE_NEUTRAL or name not in earlier or earlier[name] == str(wanted):
            continue
        return f"other fixed setting: train.{name} was {earlier[name]}, this study fixes {wanted}"
    return point, float(value)


def fit_value(text: str, distribution: optuna.distributions.BaseDistribution) -> Any:
    """`text` as a value of `distribution`, or None when it is not one."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return next((choice for choice in distribution.choices if str(choice) == text), None)
    try:
        number = float(text)
    except ValueError:
        return None
    if not distribution.low <= number <= distribution.high:
        return None
    if isinstance(distribution, optuna.distributions.IntDistribution):
        return int(number) if number == int(number) else None
    return number


def describe(distribution: optuna.distributions.BaseDistribution) -> str:
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return f"[{', '.join(map(str, distribution.choices))}]"
    return f"[{distribution.low}, {distribution.high}]"


def give_to_searcher(searcher, space: dict[str, Any], fixed: dict[str, Any], warm: WarmStart) -> int:
    """Add the fitted earlier trials to the Optuna study inside a Tune OptunaSearch, as finished trials with their
    recorded scores, each under the distribution the study's define-by-run space gives it; returns how many."""
    study = optuna_study_of(searcher)
    trials = []
    for earlier in warm.given:
        typed = dict(fixed)
        distributions = {}
        for name, spec in space.items():
            if name in earlier.params and applies(spec, typed):
                distributions[name] = distribution_of(name, spec, typed)
                typed[name] = earlier.params[name]
        trials.append(optuna.trial.create_trial(params=earlier.params, distributions=distributions,
                                                value=earlier.value,
                                                user_attrs={USER_ATTR_RUN: earlier.run_id}))
    study.add_trials(trials)
    return len(trials)
