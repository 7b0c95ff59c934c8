"""A study's plan: its id, folder, space and data, decided before Ray starts; and finding it again on resume."""
from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from leukotune.tuner.config import StudyConfig, build_study
from leukotune.tuner.preflight import DataSummary, check_storage, check_weights, summarise_data
from leukotune.tuner.tracking.client import check_reachable, resolve_tracking_uri
from leukotune.tuner.tracking.study_records import recorded_fingerprint
from leukotune.tuner.tune.differences import Change, ResumeRefused, resumed_config
from leukotune.tuner.tune.space import resolve_space
from leukotune.tuner.tune.warm_start import gather_warm_start

STUDY_FILE = "leukotune_study.json"
# Written when a study completes: its outcome and leaderboard, so `--resume` can answer without starting Ray.
RESULT_FILE = "leukotune_result.json"
# Tune writes this when it first saves the experiment; without it there is nothing Tune could restore.
TUNE_STATE_FILE = "tuner.pkl"


class ResumeError(RuntimeError):
    """--resume finds no study to continue, or one whose saved state it cannot read."""


@dataclass
class StudyPlan:
    """Everything decided before Ray starts: ids, paths, the space, and the data that will be used."""

    study: StudyConfig
    study_id: str
    directory: Path
    space: dict[str, Any]
    resume: bool
    data_summary: DataSummary | None = None  # None only for a finished study (`finished`), where nothing runs
    # On --resume of a study that already completed: its saved outcome (see `save_result`); nothing is run.
    finished: dict[str, Any] | None = None
    # On --resume with a larger tune.num_samples than a finished study ran: the trials it had (it is extended).
    extends_from: int | None = None
    # The budget keys this --resume changed (tuner/tune/differences.py): written into Tune's saved state.
    budget_changes: list[Change] = field(default_factory=list)
    # A new study's earlier trials from `tune.warm_start` (tuner/tune/warm_start.py), read before Ray starts.
    warm_start: Any = None


def plan_study(study: StudyConfig, resume: bool, log: Callable[[str], None] = print) -> StudyPlan:
    # The tracking store first: a server or database that does not answer is one line in seconds, before the data
    # is read.
    check_reachable(resolve_tracking_uri(study.tracking.tracking_uri))
    storage = check_storage(study.storage_path, float(os.environ.get("LEUKOTUNE_MIN_FREE_GB", "1.0")))
    extends_from: int | None = None
    budget: list[Change] = []
    if resume:
        directory = latest_study_dir(storage, study.name)
        saved = json.loads((directory / STUDY_FILE).read_text())
        try:
            study, budget = resumed_config(directory.name, build_study(saved["config"]), study)
        except ResumeRefused as exc:
            raise ResumeError(str(exc)) from None
        finished = load_result(directory)
        ran = len(finished["leaderboard"]) if finished is not None else 0
        if finished is not None and study.tune.num_samples <= ran:
            return StudyPlan(study=study, study_id=directory.name, directory=directory, space={}, resume=True,
                             finished=finished)
        if not (directory / TUNE_STATE_FILE).is_file():
            raise ResumeError(f"--resume: study {directory.name} stopped before Tune saved any state "
                              f"({directory / TUNE_STATE_FILE} is missing); start it again without --resume")
        if finished is not None:
            extends_from = ran
            log(f"extending study {directory.name} from {ran} to {study.tune.num_samples} trials (same parent run; "
                f"the searcher continues from its saved state)")
        else:
            log(f"resuming study {directory.name} (its saved configuration is used"
                + (f"; {', '.join(c.describe() for c in budget)}" if budget else "") + ")")
    else:
        # Four random hex digits: two studies of one name started in the same second (two users, two jobs) must not
        # share an id, which names their folder and finds their runs in MLflow.
        directory = storage / f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    space = resolve_space(study)
    check_weights(study, space)
    plan = StudyPlan(study=study, study_id=directory.name, directory=directory, space=space, resume=resume,
                     extends_from=extends_from, budget_changes=budget)
    plan.data_summary = summarise_data(study)
    if resume:
        check_same_data(plan, saved.get("parent_run_id"))
    if not resume and study.tune.warm_start:
        # A resumed study's searcher already holds its warm start (restored with Tune's state).
        plan.warm_start = gather_warm_start(study, space, plan.data_summary.fingerprint, log)
    return plan


def check_same_data(plan: StudyPlan, parent_run_id: str | None) -> None:
    """Refuse to resume or extend a study whose data changed since it started: its earlier trials were scored on
    the data its parent run recorded."""
    if not parent_run_id:
        return
    recorded = recorded_fingerprint(resolve_tracking_uri(plan.study.tracking.tracking_uri), parent_run_id)
    now = plan.data_summary.fingerprint if plan.data_summary else None
    if recorded and now and recorded != now:
        raise ResumeError(f"--resume: the data of study {plan.study_id} changed since it started (fingerprint "
                          f"{recorded[:12]} -> {now[:12]}); start a new study (tune.warm_start={plan.study_id} "
                          f"begins from its trials and says the data differ)")


def latest_study_dir(storage: Path, name: str) -> Path:
    # The whole folder name: `smoke-*` alone also matches the folders of a study named `smoke-wide`.
    own = re.compile(rf"{re.escape(name)}-\d{{8}}-\d{{6}}(-[0-9a-f]{{4}})?")
    candidates = sorted((p for p in storage.glob(f"{name}-*") if own.fullmatch(p.name) and (p / STUDY_FILE).is_file()),
                        key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ResumeError(f"--resume: no study named '{name}' under {storage}; start it without --resume first")
    return candidates[-1]


def save_plan(plan: StudyPlan, parent_run_id: str) -> None:
    plan.directory.mkdir(parents=True, exist_ok=True)
    payload = {"study_id": plan.study_id, "config": plan.study.to_dict(), "parent_run_id": parent_run_id}
    (plan.directory / STUDY_FILE).write_text(json.dumps(payload, indent=2, default=str))


def save_result(directory: Path, outcome: dict[str, Any]) -> None:
    """Record a completed study's outcome; written to a temporary file first so a kill never leaves half of it."""
    partial = directory / f".{RESULT_FILE}.partial"
    partial.write_text(json.dumps(outcome, indent=2, default=str))
    partial.replace(directory / RESULT_FILE)


def load_result(directory: Path) -> dict[str, Any] | None:
    """The saved outcome of a completed study, or None while it is unfinished."""
    path = directory / RESULT_FILE
    if not path.is_file():
        return None
    try:
        outcome = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ResumeError(f"--resume: {path} is not valid JSON ({exc}); delete it to resume the study") from exc
    return outcome if outcome.get("complete") else None
