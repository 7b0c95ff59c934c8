"""Checks before anything starts: storage, weights and data, so a study fails in seconds, not after an hour
inside a trial. (The search space is resolved and checked with the study's plan: tuner/tune/space.py.)"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from leukotune.data import DatasetError, SkippedFile, split_subjects
from leukotune.models import UnknownModelError, WeightsNotFoundError, get_model_spec, resolve_weights_path
from leukotune.tuner.cluster.storage import StorageError
from leukotune.tuner.config import StudyConfig
from leukotune.tuner.train.data_source import prepare_study_data, resolve_data_root

# `s3://bucket/runs`, `gs://...`: Tune would sync checkpoints there, but leukotune reads them as files (the test
# side, the model export, --resume), and `Path.resolve` would quietly make a local folder named `s3:` of it.
CLOUD_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def check_storage(storage_path: str, min_free_gb: float = 1.0) -> Path:
    """The study storage folder, resolved; fail at start, not after an hour, when checkpoints could not be
    written there (a cloud URI, a folder that is not writable or nearly full)."""
    if CLOUD_URI.match(storage_path.strip()):
        raise StorageError(f"storage_path {storage_path} is a cloud URI; leukotune reads trial checkpoints as files "
                           f"(test side, model export, --resume): set storage_path to a folder every node mounts "
                           f"(e.g. an EFS or NFS mount: --set storage_path=/mnt/shared/runs; docs/cluster.md)")
    directory = Path(storage_path).expanduser().resolve()
    probe = directory / ".write-test"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise StorageError(f"storage_path {directory} is not writable: {exc.strerror or exc}") from exc
    free_gb = _free_gb(directory)
    if free_gb < min_free_gb:
        raise StorageError(f"storage_path {directory} has only {free_gb:.2f} GB free; at least {min_free_gb} GB "
                           f"is needed for checkpoints (set LEUKOTUNE_MIN_FREE_GB to change the threshold)")
    return directory


def _free_gb(directory: Path) -> float:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize / 1e9


def check_weights(study: StudyConfig, space: dict[str, Any]) -> None:
    """Pretrained weights cannot be downloaded mid-study: find them now for every model the study can pick."""

    if not study.train.weights:
        return
    names = set(space.get("model", {}).get("choice", [])) | {study.train.model}
    for name in sorted(names):
        if "weights" in get_model_spec(name).takes:
            try:
                resolve_weights_path(name, study.train.weights)
            except (WeightsNotFoundError, UnknownModelError) as exc:  # re-raised with the study key named
                raise type(exc)(f"train.weights={study.train.weights!r} for {name}: {exc}") from exc


@dataclass(frozen=True)
class DataSummary:
    """What a study's data holds, read once on the driver before Ray starts: the plan carries it, the console and
    the parent run report it, the test side asks it whether there is a test side at all."""

    root: str
    cells: int
    all: int  # cells labelled ALL
    hem: int  # cells labelled normal
    subjects: int
    split: dict[str, dict[str, int]]  # side (total, train, val, test) -> class -> cells
    split_subjects: dict[str, list[str]]  # side -> subject ids
    skipped: tuple[SkippedFile, ...]
    synthetic: bool
    fingerprint: str
    split_method: str
    test_source: str  # prelim (the C-NMC preliminary test folder), subjects (set aside) or none
    # Cross-validation: each fold's validation side, {"cells", "subjects", "all", "hem"}; empty for one split.
    folds: tuple[dict[str, int], ...] = ()

    def cells_on(self, *sides: str) -> int:
        """Cells on the given sides together (e.g. `cells_on("train", "val")`)."""
        return sum(sum(self.split.get(side, {}).values()) for side in sides)

    def to_dict(self) -> dict[str, Any]:
        """As logged with the parent run (`data/summary.json`)."""
        values = asdict(self)
        values["skipped"] = [{"path": s.path, "reason": s.reason} for s in self.skipped]
        return values


def summarise_data(study: StudyConfig) -> DataSummary:
    """Decode and split the data once on the driver, before Ray starts.

    Unreadable files are found here (and listed in the parent run), not one trial at a time; a folder with nothing
    usable, or a split that leaves a class out, stops the command. The decoded cache it builds is the one the
    trials on this node then read.
    """

    root = resolve_data_root(study.data)
    try:
        data = prepare_study_data(study)
    except DatasetError as exc:
        raise DatasetError(f"data: {exc}") from exc
    labels = data.labels.tolist()
    return DataSummary(root=str(root), cells=len(labels), all=labels.count(1), hem=labels.count(0),
                       subjects=len(set(data.subjects.tolist())), split=data.counts,
                       split_subjects=split_subjects(data), skipped=tuple(data.skipped),
                       synthetic=not study.data.path, fingerprint=data.fingerprint, split_method=data.split,
                       test_source=data.test_source, folds=tuple(_fold_counts(data)))


def _fold_counts(data) -> list[dict[str, int]]:
    return [{"cells": len(val), "subjects": len(set(data.subjects[val].tolist())),
             "all": int((data.labels[val] == 1).sum()), "hem": int((data.labels[val] == 0).sum())}
            for val in data.folds]
