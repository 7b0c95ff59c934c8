"""A study whose driver is a Ray Job (`ray job submit`, `leukotune submit`): keep its records out of the job's scratch.

Ray unpacks an uploaded working_dir under its session folder, starts the job's driver inside it, and deletes it
with the cluster. The embedded defaults (SQLite in `.leukotune/mlflow.db`, `storage_path: .leukotune/runs`) would
put the study's MLflow records and checkpoints there.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlparse

from leukotune.tuner.tracking.client import redact

# Set by Ray's job supervisor for the driver it starts (ray._private.runtime_env.constants).
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def job_working_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The job's working directory when this process is a Ray Job's driver with an uploaded working_dir."""
    raw = (os.environ if environ is None else environ).get(JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(config, dict) or not (config.get("metadata") or {}).get("job_submission_id"):
        return None
    # The supervisor starts the driver in the unpacked working_dir; without one, the driver's folder is not Ray's.
    return Path.cwd().resolve() if (config.get("runtime_env") or {}).get("working_dir") else None


def local_store(uri: str) -> Path | None:
    """The file or folder a local MLflow store writes to (SQLite, file store), None for a server."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = unquote(parsed.path)
        return Path(path[1:] if path.startswith("//") else path).resolve()
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path) if parsed.scheme else uri).expanduser().resolve()
    return None


def records_in_scratch(uri: str, storage: Path, workdir: Path | None) -> list[str]:
    """Which of the study's records (MLflow store, storage_path) would lie inside the job's working dir."""
    if workdir is None:
        return []
    inside = []
    store = local_store(uri)
    if store is not None and store.is_relative_to(workdir):
        inside.append(f"MLflow store {redact(uri)}")
    if storage.resolve().is_relative_to(workdir):
        inside.append(f"storage_path {storage}")
    return inside


def scratch_warning(uri: str, storage: Path, workdir: Path | None = None) -> str | None:
    """One line for the start of a study run as a Ray Job whose records Ray would delete, naming the fix."""
    workdir = job_working_dir() if workdir is None else workdir
    inside = records_in_scratch(uri, storage, workdir)
    if not inside:
        return None
    return (f"warning: this Ray Job runs in Ray's temporary working_dir {workdir}, deleted with the cluster, and "
            f"{' and '.join(inside)} lie inside it; set MLFLOW_TRACKING_URI=http://HOST:5000 in the job's "
            f"environment and --set storage_path=/a/shared/folder (see docs/cluster.md, `ray job submit`)")


def records_note(uri: str, storage: Path, workdir: Path | None = None) -> str | None:
    """For the end of a study run as a Ray Job: where its records are, and whether Ray will delete them."""
    workdir = job_working_dir() if workdir is None else workdir
    if workdir is None:
        return None
    inside = records_in_scratch(uri, storage, workdir)
    note = f"records of this Ray Job: MLflow {redact(uri)}, Tune results and checkpoints in {storage}"
    if inside:
        # The paths are in the line already; name only which records Ray will delete.
        names = ["the MLflow store" if item.startswith("MLflow") else "storage_path" for item in inside]
        note += (f"; {' and '.join(names)} {'lie' if len(names) > 1 else 'lies'} in the job's working_dir: copy "
                 f"them out before the cluster stops")
    return note
