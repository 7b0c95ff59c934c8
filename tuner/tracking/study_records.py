"""What a study left in MLflow, read back: its parent run (config, space, data fingerprint, code version) and its
finished trial runs. `leukotune diff` compares two of them; a warm-started study reads an earlier one's trials.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from leukotune.tuner.tracking.client import (
    TAG_CODE_VERSION,
    TAG_FINGERPRINT,
    TAG_KIND,
    TAG_STUDY,
    search_all_runs,
    with_retries,
)

CONFIG_ARTIFACT = "config/resolved.json"
SPACE_ARTIFACT = "config/search_space.json"


class StudyNotFoundError(LookupError):
    """No study run (or experiment) of that name in the tracking store."""


@dataclass(frozen=True)
class StudyRecord:
    """One study's parent run, as `leukotune diff` and a warm start read it."""

    study_id: str
    run_id: str
    experiment: str
    status: str
    config: dict[str, Any]
    space: dict[str, Any]
    fingerprint: str | None
    code_version: str | None


def study_runs_named(client: MlflowClient, name: str) -> list[Run]:
    """The parent runs `name` means: the study of that id, else every study in the experiment of that name (newest
    first). StudyNotFoundError when it is neither."""
    experiments = with_retries(lambda: client.search_experiments(view_type=ViewType.ACTIVE_ONLY), "list experiments")
    ids = [e.experiment_id for e in experiments]
    by_id = _search(client, ids, f"tags.`{TAG_STUDY}` = '{name}' and tags.`{TAG_KIND}` = 'study'") if ids else []
    if by_id:
        return by_id
    experiment = next((e for e in experiments if e.name == name), None)
    if experiment is not None:
        found = _search(client, [experiment.experiment_id], f"tags.`{TAG_KIND}` = 'study'")
        if found:
            return found
    raise StudyNotFoundError(f"no study '{name}' in the tracking store (neither a study id nor an experiment "
                             f"holding studies)")


def read_study(client: MlflowClient, run: Run) -> StudyRecord:
    """A parent run's record: the resolved config and space it logged, its data fingerprint and code version."""
    experiment = with_retries(lambda: client.get_experiment(run.info.experiment_id), "read experiment")
    tags = run.data.tags
    return StudyRecord(study_id=tags.get(TAG_STUDY, run.info.run_name or run.info.run_id), run_id=run.info.run_id,
                       experiment=experiment.name, status=run.info.status,
                       config=_artifact_json(client, run.info.run_id, CONFIG_ARTIFACT) or {},
                       space=_artifact_json(client, run.info.run_id, SPACE_ARTIFACT) or {},
                       fingerprint=tags.get(TAG_FINGERPRINT), code_version=tags.get(TAG_CODE_VERSION))


def recorded_fingerprint(tracking_uri: str, run_id: str) -> str | None:
    """The data fingerprint a study's parent run recorded when it started (None: no such run or tag)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = with_retries(lambda: client.get_run(run_id), "read run", attempts=2)
    except Exception:  # noqa: BLE001 - a run deleted by hand: nothing to compare with
        return None
    return run.data.tags.get(TAG_FINGERPRINT)


def finished_trial_runs(client: MlflowClient, study: StudyRecord) -> list[Run]:
    """The study's trial runs that finished (FINISHED in MLflow), oldest first."""
    experiment = with_retries(lambda: client.get_experiment_by_name(study.experiment), "read experiment")
    runs = _search(client, [experiment.experiment_id],
                   f"tags.`{TAG_STUDY}` = '{study.study_id}' and tags.`{TAG_KIND}` = 'trial' "
                   f"and attributes.status = 'FINISHED'")
    return sorted(runs, key=lambda run: run.info.start_time or 0)


def _search(client: MlflowClient, experiment_ids: list[str], query: str) -> list[Run]:
    return search_all_runs(client, experiment_ids, query, order_by=["attributes.start_time DESC"])


def _artifact_json(client: MlflowClient, run_id: str, path: str) -> Any:
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = client.download_artifacts(run_id, path, folder)
        except Exception:  # noqa: BLE001 - a run made before this artifact existed has none: read as empty
            return None
        return json.loads(Path(local).read_text())
