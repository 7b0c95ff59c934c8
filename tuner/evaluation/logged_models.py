"""A model from the tracking server, for `leukotune predict` and `leukotune evaluate`: a `TrainedModel` rebuilt
from what the study logged.

The model comes only from the tracking server (`models:/NAME@alias`, `models:/NAME/N`, a LoggedModel's
`models:/<model_id>`, or an older study's `runs:/<id>/model`) and is never unpickled: the network is rebuilt from
the registry name and builder kwargs in the MLmodel's `metadata.leukotune` block, and the plain state dict beside
it is read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow.artifacts
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from torch import nn

from leukotune.models import rebuild_network
from leukotune.tuner.evaluation.calibration import StoredDecision
from leukotune.tuner.evaluation.inference import CLASS_NAMES, REQUIRED_PREPROCESSING, TrainedModel
from leukotune.tuner.registry.model_uris import logged_model_id, process_tracking_uri, registered_parts
from leukotune.tuner.tracking.client import check_reachable, redact

MODEL_SCHEMES = ("models:/", "runs:/")


class ModelURIError(ValueError):
    """--model names something other than a model on the tracking server (a path, a bucket, a typo)."""


class ModelDownloadError(RuntimeError):
    """The tracking server could not hand over the model's files (no such model or alias, refused credentials)."""


class UnusableModelError(ValueError):
    """The downloaded model lacks what leukotune needs to rebuild it (not logged by leukotune, or incomplete)."""


def check_model_uri(model_uri: str) -> None:
    """Only registry or run URIs: a local path or bucket would bypass the tracking server's records."""
    if not model_uri.startswith(MODEL_SCHEMES):
        raise ModelURIError(f"--model {model_uri!r}: give a model from the tracking server, e.g. "
                            f"models:/leukotune-<experiment>@champion (or a logged model, models:/<model_id>)")


def download_model(model_uri: str, tracking_uri: str, destination: Path) -> Path:
    try:
        with process_tracking_uri(tracking_uri):
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(destination),
                                                            tracking_uri=tracking_uri, registry_uri=tracking_uri))
    except MlflowException as exc:
        first = redact(str(getattr(exc, "message", exc))).strip().splitlines()[0][:300]
        if "401" in first or "403" in first:
            first = "the server refused the credentials (set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
        raise ModelDownloadError(f"model {model_uri} could not be fetched from {redact(tracking_uri)}: {first}") \
            from None


def read_metadata(model_dir: Path) -> dict[str, Any]:
    """The `metadata.leukotune` block of the MLmodel file, checked for what prediction needs."""
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        raise UnusableModelError(f"{model_dir.name}: no MLmodel file; is this a model logged by leukotune?")
    meta = ((yaml.safe_load(mlmodel.read_text()) or {}).get("metadata") or {}).get("leukotune")
    if not isinstance(meta, dict):
        raise UnusableModelError("the model has no `metadata.leukotune` block (it was not logged by leukotune), so "
                                 "its preprocessing is unknown")
    missing = [k for k in ("model_name", "model_kwargs", "preprocessing", "state_dict") if k not in meta]
    missing += [f"preprocessing.{k}" for k in REQUIRED_PREPROCESSING if k not in meta.get("preprocessing", {})]
    if missing:
        raise UnusableModelError(f"the model's leukotune metadata lacks {', '.join(missing)}")
    return meta


def state_dict_path(model_dir: Path, relative: str) -> Path:
    """The weights file named by the metadata, which must lie inside the downloaded model folder."""
    root = model_dir.resolve()
    path = (root / relative).resolve()
    if root not in path.parents or not path.is_file():
        raise UnusableModelError(f"the model's weights file {relative!r} is missing from the downloaded model")
    return path


def build_network(meta: dict[str, Any], model_dir: Path) -> nn.Module:
    """Registry name + saved builder kwargs (no ImageNet download) + the state dict, read as plain tensors."""
    state = torch.load(state_dict_path(model_dir, meta["state_dict"]), map_location="cpu", weights_only=True)
    return rebuild_network(meta["model_name"], meta["model_kwargs"], state,
                           ensemble_members=int(meta.get("ensemble_members", 0)))


def load_model(model_uri: str, tracking_uri: str) -> TrainedModel:
    """Fetch the model's files from the tracking server and rebuild it, with the temperature and threshold of its
    registered version (`stored_decision`); the download is deleted afterwards."""
    check_model_uri(model_uri)
    check_reachable(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="leukotune-predict-") as tmp:
        model_dir = download_model(model_uri, tracking_uri, Path(tmp))
        meta = read_metadata(model_dir)
        network = build_network(meta, model_dir)
    class_names = list(meta.get("class_names") or CLASS_NAMES)
    if sorted(class_names) != ["all", "hem"]:
        raise UnusableModelError(f"the model's classes are {class_names}; expected hem and all")
    decision = stored_decision(model_uri, tracking_uri)
    return TrainedModel(network, dict(meta["preprocessing"]), class_names, meta["model_name"], meta.get("best_epoch"),
                        temperature=decision.temperature, threshold=decision.threshold)


def _registered_version(model_uri: str, client: MlflowClient):
    """The registry's ModelVersion behind `models:/NAME@alias` or `models:/NAME/N`; None for a logged model id or a
    run URI (raises MlflowException when the registry does not know it)."""
    parts = registered_parts(model_uri)
    if parts is None:
        return None
    name, alias, number = parts
    return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)


def stored_decision(model_uri: str, tracking_uri: str) -> StoredDecision:
    """The calibration and operating point `leukotune promote` stored with the registered version. A logged model
    (`models:/<model_id>`) or a run's model is not a promoted version: it is used as trained (temperature 1.0,
    threshold 0.5) and says so."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version = _registered_version(model_uri, client)
    if version is None:
        return StoredDecision(reason="not a registered version: only `leukotune promote` stores a calibration")
    try:
        return StoredDecision.from_tags(dict(version.tags or {}), missing=f"version {version.version} was promoted "
                                                                          f"before calibration existed")
    except ValueError as exc:
        raise UnusableModelError(f"version {version.version} of {version.name}: {exc}") from None


def describe_version(model_uri: str, tracking_uri: str) -> str | None:
    """`version N (run R)` for a `models:/NAME@alias` or `models:/NAME/N` URI, `logged model M (run R)` for
    `models:/<model_id>`; None when it cannot be told."""
    if not model_uri.startswith("models:/"):
        return None
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if logged_model_id(model_uri):
            logged = client.get_logged_model(model_uri[len("models:/"):])
            return f"logged model {logged.model_id} (run {logged.source_run_id})"
        version = _registered_version(model_uri, client)
    except Exception:  # noqa: BLE001 - informational only; the download already succeeded
        return None
    return f"version {version.version} (run {version.run_id})" if version is not None else None
