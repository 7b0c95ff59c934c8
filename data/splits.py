"""Train/validation splits of a record list: by subject (the default), by image (the paper's), or by C-NMC fold.

Cells of one patient share stain, imaging session and morphology, so an image-level split lets a model score by
recognising patients it has already seen; the subject split keeps every patient on one side only.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .cnmc import CellRecord, fold_sort_key
from .errors import DatasetError

__all__ = ["SPLIT_METHODS", "Split", "split_records"]


@dataclass
class Split:
    """Sorted integer indices into the record list for each side, and the method that made them."""

    train: np.ndarray
    val: np.ndarray
    method: str


def split_records(records: Sequence[CellRecord], method: str = "subject", val_fraction: float = 0.2,
                  seed: int = 0, val_fold: str | None = None) -> Split:
    """Split `records` into train and validation indices; seeded and deterministic.

    ``subject``: whole subjects per class, so validation gets about `val_fraction` of each class's cells and at
    least one subject of each class on each side when that class has two or more. ``image``: cells drawn per
    class regardless of subject. ``fold``: validation is C-NMC fold `val_fold` (default: the last numbered one).
    """
    if method not in SPLIT_METHODS:
        raise ValueError(f"unknown split method {method!r}; valid: {', '.join(SPLIT_METHODS)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if method == "fold":
        val_mask = _fold_mask(records, val_fold)
    else:
        val_mask = SPLIT_METHODS[method](records, val_fraction, np.random.default_rng(seed))
    return Split(train=np.flatnonzero(~val_mask), val=np.flatnonzero(val_mask), method=method)


def _take_count(n: int, fraction: float) -> int:
    """How many of `n` items go to validation: about `fraction`, but leave at least one on each side when n >= 2."""
    return 0 if n < 2 else min(max(round(n * fraction), 1), n - 1)


def _by_image(records: Sequence[CellRecord], val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Stratified by label: each class gives about `val_fraction` of its cells."""
    labels = np.array([r.label for r in records], dtype=np.int64)
    mask = np.zeros(len(records), dtype=bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        mask[members[:_take_count(len(members), val_fraction)]] = True
    return mask


def _by_subject(records: Sequence[CellRecord], val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Whole subjects to validation, chosen per class (a subject's class is its majority label; C-NMC subjects
    are single-class) so that each class's validation share of cells is as close to `val_fraction` as possible."""
    cells: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        cells[record.subject].append(index)
    by_class: dict[int, list[str]] = defaultdict(list)
    for subject in sorted(cells):
        votes = Counter(records[i].label for i in cells[subject])
        by_class[max(votes, key=lambda label: (votes[label], label))].append(subject)
    mask = np.zeros(len(records), dtype=bool)
    for label in sorted(by_class):
        subjects = [by_class[label][i] for i in rng.permutation(len(by_class[label]))]
        for subject in _pick_subjects(subjects, [len(cells[s]) for s in subjects], val_fraction):
            mask[cells[subject]] = True
    return mask


def _pick_subjects(subjects: list[str], sizes: list[int], val_fraction: float) -> list[str]:
    """The prefix of the (shuffled) `subjects` whose cell count is closest to `val_fraction` of the total,
    keeping at least one subject on each side when there are two or more."""
    if len(subjects) < 2:
        return []  # a lone subject trains; the caller reports the class missing from validation
    target = val_fraction * sum(sizes)
    cumulative = np.cumsum(sizes)
    take = 1 + int(np.argmin(np.abs(cumulative[:-1] - target)))  # 1 .. len-1 subjects
    return subjects[:take]


def _fold_mask(records: Sequence[CellRecord], val_fold: str | None) -> np.ndarray:
    """Validation = the records of `val_fold`; by default the last numbered fold (never the prelim test set)."""
    folds = sorted({r.fold for r in records}, key=fold_sort_key)
    if len(folds) < 2:
        raise DatasetError(f"split 'fold' needs at least two folds; found {folds or 'none'}")
    if val_fold is None:
        numbered = [f for f in folds if f.isdigit()]
        val_fold = numbered[-1] if numbered else folds[-1]
    if str(val_fold) not in folds:
        raise DatasetError(f"val_fold {val_fold!r} not in the dataset; folds: {', '.join(folds)}")
    return np.array([r.fold == str(val_fold) for r in records], dtype=bool)


SPLIT_METHODS: dict[str, Callable[[Sequence[CellRecord], float, np.random.Generator], np.ndarray] | None] = {
    "subject": _by_subject,
    "image": _by_image,
    "fold": None,  # no fraction or randomness: handled by _fold_mask
}
