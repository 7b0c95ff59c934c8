"""Dataset lineage with MLflow's own dataset entities: which cells and which side of the split a run used.

One input per side of the split (`train`, `val`, and `test` where the data has one), all with the data's
fingerprint as digest, so the runs table's Dataset column, the registered model version and the model card all
name the same data. The parent run gets them when it is created; every trial run copies the parent's.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow.data import get_dataset_source_from_json
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from leukotune.tuner.preflight import DataSummary
from leukotune.tuner.tracking.client import Tracker, with_retries

TAG_SPLIT = "leukotune.split"
TAG_TEST_SOURCE = "leukotune.test_source"
TAG_DATASET_DIGEST = "leukotune.dataset_digest"
TAG_DATASETS = "leukotune.datasets"
SYNTHETIC_NAME = "synthetic-cnmc"


class CellImages(MetaDataset):
    """One side of the split: its source and fingerprint, with the per-class cell counts as its profile."""

    def __init__(self, source: DatasetSource, name: str, digest: str, counts: dict[str, int]):
        self._counts = dict(counts)
        super().__init__(source=source, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, int]:
        return {"cells": sum(self._counts.values()), **self._counts}

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self.profile)}


def data_source(data: DataSummary, synthetic: dict[str, Any] | None) -> DatasetSource:
    """The real folder as a local source; the synthetic stand-in as code, with the parameters that regenerate it."""
    if data.synthetic:
        params = ",".join(f"{key}={value}" for key, value in sorted((synthetic or {}).items()))
        return CodeDatasetSource({"source": f"synthetic:{params}", "generator": "leukotune data synth",
                                  "path": data.root})
    # `local` is the type MLflow gives a file path; resolving it by type avoids its ambiguous path guessing.
    return get_dataset_source_from_json(json.dumps({"uri": data.root}), "local")


def dataset_name(data: DataSummary) -> str:
    """Readable in the runs table: the data folder's name, or `synthetic-cnmc`."""
    if data.synthetic:
        return SYNTHETIC_NAME
    return Path(data.root or "cnmc").name or "cnmc"


def split_sides(data: DataSummary) -> list[str]:
    """The sides the split produced (`train`, `val`, and `test` when there is one); `total` is no side."""
    return [side for side in data.split if side != "total"]


def study_dataset_inputs(data: DataSummary, split: str, synthetic: dict[str, Any] | None = None
                         ) -> list[DatasetInput]:
    """One dataset input per side, digest = the data fingerprint, context = the side's name."""
    source, base = data_source(data, synthetic), dataset_name(data)
    digest = data.fingerprint or "unknown"
    inputs = []
    for side in split_sides(data):
        # One name per side: MLflow keeps a single input per (name, digest) on a run.
        dataset = CellImages(source, f"{base}-{side}", digest, data.split[side])
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, side), InputTag(TAG_SPLIT, split)]
        if side == "test" and data.test_source:  # the preliminary test folder, or subjects set aside
            tags.append(InputTag(TAG_TEST_SOURCE, data.test_source))
        inputs.append(DatasetInput(dataset=DatasetEntity(**dataset.to_dict()), tags=tags))
    return inputs


def log_dataset_inputs(tracker: Tracker, run_id: str, inputs: list[DatasetInput]) -> None:
    if inputs:
        with_retries(lambda: tracker.client.log_inputs(run_id, datasets=inputs), "log dataset inputs",
                     log=tracker.log)


def run_dataset_inputs(tracker: Tracker, run_id: str) -> list[DatasetInput]:
    """The dataset inputs already on a run (a trial copies its study's)."""
    run = with_retries(lambda: tracker.client.get_run(run_id), "read run", log=tracker.log)
    return list(run.inputs.dataset_inputs) if run.inputs else []


def dataset_tags(run) -> dict[str, str]:
    """Tags naming a run's datasets (`name (digest)` per side) for its registered model version and model card."""
    inputs = list(run.inputs.dataset_inputs) if run.inputs else []
    if not inputs:
        return {}
    return {TAG_DATASET_DIGEST: inputs[0].dataset.digest,
            TAG_DATASETS: ", ".join(f"{i.dataset.name} ({i.dataset.digest})" for i in inputs)}
