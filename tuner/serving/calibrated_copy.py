"""The writing side of a served model's operating point: a copy of a trial's LoggedModel whose MLmodel carries a
temperature and a threshold.

A served model reads its operating point from its own files (`image_model.py`); the registry's version tags
(`leukotune.temperature`, `leukotune.threshold`) never reach it. A promotion that stores calibration registers such
a copy, so that `mlflow models serve` answers with the calibrated P(ALL) and the call `leukotune predict` gives.
Same run, same weights, same metadata otherwise, tagged with the model it was copied from.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow.artifacts
import torch
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from leukotune.tuner.registry.model_uris import logged_model_id, process_tracking_uri
from leukotune.tuner.tracking.artifacts import log_pytorch_model
from leukotune.tuner.tracking.client import Tracker

TAG_COPIED_FROM = "leukotune.copied_from"


def log_calibrated_copy(tracking_uri: str, model_uri: str, temperature: float, threshold: float) -> str:
    """`models:/<model_id>` of a new LoggedModel of the same run as `model_uri` (a `models:/<model_id>`) whose
    metadata carries `temperature` and `threshold`."""
    model_id = logged_model_id(model_uri)
    if model_id is None:
        raise ValueError(f"{model_uri!r} is not a logged model (models:/<model_id>)")
    client = MlflowClient(tracking_uri=tracking_uri)
    source = client.get_logged_model(model_id)
    tracker = Tracker(tracking_uri, client.get_experiment(source.experiment_id).name, log=lambda _m: None)
    with tempfile.TemporaryDirectory(prefix="leukotune-copy-") as tmp, process_tracking_uri(tracking_uri):
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=source.artifact_location, dst_path=tmp,
                                                          tracking_uri=tracking_uri))
        facts = (Model.load(str(folder)).metadata or {})["leukotune"]
        state = torch.load(folder / facts["state_dict"], map_location="cpu", weights_only=True)
    best = {"model": state, "model_name": facts["model_name"], "model_kwargs": facts["model_kwargs"],
            "preprocessing": facts["preprocessing"], "epoch": facts["best_epoch"],
            "ensemble_members": int(facts.get("ensemble_members", 0))}
    tags = {key: value for key, value in (source.tags or {}).items() if not key.startswith("mlflow.")}
    return log_pytorch_model(tracker, source.source_run_id, best, source.name, {**tags, TAG_COPIED_FROM: model_id},
                             temperature=temperature, threshold=threshold)
