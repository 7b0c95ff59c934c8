"""`models:/` URIs against one tracking server: which LoggedModel a URI names, and the process-wide URIs MLflow
reads behind an explicit client's back."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import mlflow

from leukotune.tuner.compat import mlflow_process_uris, restore_mlflow_process_uris

MODELS_SCHEME = "models:/"
# The version tag naming the trial's own LoggedModel, which a calibrated version's registered model was copied from.
TAG_TRAINED_MODEL = "leukotune.trained_model"


def logged_model_id(model_uri: str) -> str | None:
    """`m-...` for `models:/<model_id>`; None for `models:/NAME@alias`, `models:/NAME/N` and `runs:/` URIs."""
    if not model_uri.startswith(MODELS_SCHEME):
        return None
    path = model_uri[len(MODELS_SCHEME):].strip("/")
    return path if path and "/" not in path and "@" not in path else None


def registered_parts(model_uri: str) -> tuple[str, str | None, str | None] | None:
    """(name, alias, None) for `models:/NAME@alias`, (name, None, version) for `models:/NAME/N`; None for a logged
    model id or a run URI."""
    if not model_uri.startswith(MODELS_SCHEME) or logged_model_id(model_uri):
        return None
    path = model_uri[len(MODELS_SCHEME):].strip("/")
    if "@" in path:
        name, alias = path.rsplit("@", 1)
        return name, alias, None
    name, _, version = path.rpartition("/")
    return (name, None, version) if name and version else None


_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def process_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking and registry URIs at `uri` for the block, then put the old ones back.

    MLflow 3.17 resolves `models:/` URIs with process-wide URIs, ignoring the client's own: downloads do, and so
    does the SQLite registry when it looks up the LoggedModel behind a `models:/<model_id>` version source.
    """
    # Put back exactly what was there, unset included: the setters also export MLFLOW_TRACKING_URI and
    # MLFLOW_REGISTRY_URI into os.environ, and a registry URI pinned after the block would send later calls (and
    # every subprocess started later) to this store.
    saved_env = {key: os.environ.get(key) for key in _URI_ENV}
    saved = mlflow_process_uris()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        restore_mlflow_process_uris(saved)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
