"""The one call training makes: manifest -> decoded cache -> split, with every problem found before training."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np

from .cache import load_cached_images
from .cnmc import CLASS_NAMES, CellRecord, Manifest, SkippedFile, load_manifest
from .errors import DatasetError
from .splits import cross_validation_folds, split_records

__all__ = ["PreparedData", "manifest_fingerprint", "prepare_data", "split_subjects"]


@dataclass
class PreparedData:
    """Decoded images with labels and subjects, train/val/test indices into them, and what was left out and why.

    The test side is for one evaluation after the search: training and validation never read `test_idx`.
    """

    images: np.ndarray  # uint8 (N, C, H, W), a read-only memory map of the cache
    labels: np.ndarray  # int64 (N,)
    subjects: np.ndarray  # str (N,)
    train_idx: np.ndarray
    val_idx: np.ndarray
    skipped: list[SkippedFile]
    fingerprint: str
    counts: dict[str, dict[str, int]]
    records: list[CellRecord] = field(default_factory=list)  # records[i] describes images[i]
    test_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    test_source: str = "none"  # prelim (the C-NMC preliminary test folder), subjects (set aside) or none
    split: str = "subject"
    # Cross-validation: each fold's validation side (its training side is every other non-test index). Empty for
    # one split; with folds, train_idx/val_idx are fold 0's, so every count and summary still reads one split.
    folds: list[np.ndarray] = field(default_factory=list)

    def fold_sides(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(train, val) indices of each fold, or the one split's."""
        if not self.folds:
            return [(self.train_idx, self.val_idx)]
        every = np.concatenate(self.folds)
        return [(np.setdiff1d(every, val), val) for val in self.folds]


def manifest_fingerprint(manifest: Manifest) -> str:
    """Short sha256 of the manifest's contents (paths relative to its root, so copies on two machines agree)."""
    entries = []
    for r in manifest.records:
        try:
            size = os.path.getsize(r.path)
        except OSError:
            size = -1
        entries.append([os.path.relpath(r.path, manifest.root), r.label, r.subject, r.fold, size])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def prepare_data(root: str | os.PathLike[str], *, size: int, color: str, split: str = "subject",
                 val_fraction: float = 0.2, seed: int = 0, val_fold: str | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, test_fraction: float = 0.0,
                 cv_folds: int = 0) -> PreparedData:
    """Index `root`, decode its images once (cached), split them (see `split_records`; the preliminary test folder,
    when present, is the test side whatever `test_fraction`); with `cv_folds` >= 2, the non-test cells in that many
    folds (see `cross_validation_folds`); raise DatasetError if any side of the split lacks a class, so a study
    fails in seconds instead of after an epoch."""
    manifest = load_manifest(root)
    cached = load_cached_images(manifest.records, size, color, cache_dir)
    skipped = manifest.skipped + cached.skipped
    if len(cached.kept) == 0:
        raise DatasetError(f"{manifest.root}: none of the {len(manifest.records)} images could be decoded; "
                           f"first problem: {skipped[0].path}: {skipped[0].reason}")
    records = [manifest.records[i] for i in cached.kept]
    parts = split_records(records, split, val_fraction=val_fraction, seed=seed, val_fold=val_fold,
                          test_fraction=test_fraction)
    folds: list[np.ndarray] = []
    if cv_folds:
        non_test = np.sort(np.concatenate([parts.train, parts.val]))
        folds = cross_validation_folds(records, non_test, cv_folds, split, seed)
        parts.train, parts.val = np.setdiff1d(non_test, folds[0]), folds[0]
    counts = _split_counts(cached.labels, parts.train, parts.val, parts.test)
    _require_both_classes(counts, split, manifest.root)
    return PreparedData(
        images=cached.images, labels=cached.labels, subjects=np.array([r.subject for r in records], dtype=str),
        train_idx=parts.train, val_idx=parts.val, skipped=skipped, fingerprint=manifest_fingerprint(manifest),
        counts=counts, records=records, test_idx=parts.test, test_source=parts.test_source, split=split,
        folds=folds,
    )


def split_subjects(data: PreparedData) -> dict[str, list[str]]:
    """Subject IDs on each side, sorted (under an image split train and val share subjects; test never does)."""
    return {side: sorted(set(data.subjects[index].tolist()))
            for side, index in (("train", data.train_idx), ("val", data.val_idx), ("test", data.test_idx))}


def _split_counts(labels: np.ndarray, train: np.ndarray, val: np.ndarray,
                  test: np.ndarray) -> dict[str, dict[str, int]]:
    def per_class(index: np.ndarray) -> dict[str, int]:
        found = np.bincount(labels[index], minlength=2)
        return {"all": int(found[1]), "hem": int(found[0])}

    return {"total": per_class(np.arange(len(labels))), "train": per_class(train), "val": per_class(val),
            "test": per_class(test)}


_SPLIT_NEEDS = {
    "subject": "a subject split needs at least two subjects of each class",
    "image": "an image split needs at least two cells of each class",
    "fold": "the validation fold and the other folds must each hold both classes",
}


def _require_both_classes(counts: dict[str, dict[str, int]], split: str, root: str) -> None:
    # No test side at all is allowed (test_fraction 0); a test side without one class would have no sensitivity or
    # specificity to report.
    sides = ("train", "val", "test") if sum(counts["test"].values()) else ("train", "val")
    for side in sides:
        missing = [name for name in reversed(CLASS_NAMES) if counts[side][name] == 0]
        if missing:
            raise DatasetError(
                f"{root}: the {side} side of the '{split}' split has no {' or '.join(missing)} cells "
                f"(usable cells: {counts['total']['all']} ALL, {counts['total']['hem']} hem); "
                f"{_SPLIT_NEEDS.get(split, '')}"
            )
