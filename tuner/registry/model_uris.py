"""`models:/` URIs against one tracking server: which LoggedModel a URI names, and the process-wide URIs MLflow
reads behind an explicit client's back."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import mlflow

MODELS_SCHEME = "models:/"


def logged_model_id(model_uri: str) -> str | None:
    """`m-...` for `models:/<model_id>`; None for `models:/NAME@alias`, `models:/NAME/N` and `runs:/` URIs."""
    if not model_uri.startswith(MODELS_SCHEME):
        return None
    path = model_uri[len(MODELS_SCHEME):].strip("/")
    return path if path and "/" not in path and "@" not in path else None


@contextlib.contextmanager
def process_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking and registry URIs at `uri` for the block, then put the old ones back.

    MLflow 3.17 resolves `models:/` URIs with process-wide URIs, ignoring the client's own: downloads do, and so
    does the SQLite registry when it looks up the LoggedModel behind a `models:/<model_id>` version source.
    """
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
