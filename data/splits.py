"""Train/validation/test splits of a record list: validation by subject (the default), by image (the paper's), or by
C-NMC fold; the test side always by subject.

Cells of one patient share stain, imaging session and morphology, so an image-level split lets a model score by
recognising patients it has already seen; the subject split keeps every patient on one side only. The test side is
set aside first and is subject-disjoint whatever the validation split, so a leaky split shows up as validation far
above test.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .cnmc import CLASS_NAMES, PRELIM_FOLD, CellRecord, fold_sort_key
from .errors import DatasetError

__all__ = ["SPLIT_METHODS", "Split", "cross_validation_folds", "split_records"]


def _no_indices() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass
class Split:
    """Sorted integer indices into the record list for each side, the method that made train/val, and where the
    test side came from: ``prelim`` (the C-NMC preliminary test folder), ``subjects`` (set aside) or ``none``."""

    train: np.ndarray
    val: np.ndarray
    method: str
    test: np.ndarray = field(default_factory=_no_indices)
    test_source: str = "none"


# Subjects each class must keep off the test side so the train/validation split still has both classes.
_KEEP_FOR_SPLIT = {"subject": 2, "image": 1, "fold": 1}
_TEST_STREAM = 7  # the test side draws from its own stream, so it is the same whichever validation split is used


def split_records(records: Sequence[CellRecord], method: str = "subject", val_fraction: float = 0.2,
                  seed: int = 0, val_fold: str | None = None, test_fraction: float = 0.0) -> Split:
    """Split `records` into train, validation and test indices; seeded and deterministic.

    Test first: the records of the C-NMC preliminary test folder when present, else about `test_fraction` of each
    class's subjects (at least one each; none when 0). Then, on the rest, ``subject``: whole subjects per class,
    so validation gets about `val_fraction` of each class's cells and at least one subject of each class on each
    side when that class has two or more. ``image``: cells drawn per class regardless of subject. ``fold``:
    validation is C-NMC fold `val_fold` (default: the last numbered one).
    """
    if method not in SPLIT_METHODS:
        raise ValueError(f"unknown split method {method!r}; valid: {', '.join(SPLIT_METHODS)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be at least 0 and below 1, got {test_fraction}")
    test_mask, test_source = _test_mask(records, method, test_fraction, seed)
    rest = np.flatnonzero(~test_mask)
    kept = [records[i] for i in rest]
    if method == "fold":
        val_mask = _fold_mask(kept, val_fold)
    else:
        val_mask = SPLIT_METHODS[method](kept, val_fraction, np.random.default_rng(seed))
    return Split(train=rest[~val_mask], val=rest[val_mask], method=method, test=np.flatnonzero(test_mask),
                 test_source=test_source)


def _test_mask(records: Sequence[CellRecord], method: str, fraction: float, seed: int) -> tuple[np.ndarray, str]:
    """Which records are on the test side, and why. Always whole subjects: a patient seen in training would make
    the test score a recognition score."""
    prelim = {r.subject for r in records if r.fold == PRELIM_FOLD}
    if prelim:
        # The challenge's own held-out patients; a training cell of one of them (should there be any) goes with them.
        chosen, source = prelim, "prelim"
    elif fraction > 0:
        chosen = _test_subjects(records, method, fraction, np.random.default_rng([seed, _TEST_STREAM]))
        source = "subjects"
    else:
        return np.zeros(len(records), dtype=bool), "none"
    return np.array([r.subject in chosen for r in records], dtype=bool), source


def _test_subjects(records: Sequence[CellRecord], method: str, fraction: float,
                   rng: np.random.Generator) -> set[str]:
    """About `fraction` of each class's subjects (at least one), leaving enough for the train/validation split."""
    _, by_class = _subjects_by_class(records)
    need = _KEEP_FOR_SPLIT[method]
    chosen: set[str] = set()
    for label in sorted(by_class):
        subjects = [by_class[label][i] for i in rng.permutation(len(by_class[label]))]
        take = min(max(round(len(subjects) * fraction), 1), len(subjects) - need)
        if take < 1:
            raise DatasetError(
                f"{CLASS_NAMES[label]} has {len(subjects)} subject(s): the test side needs one and a '{method}' "
                f"split needs {need} more; use more subjects, or test_fraction 0 for no test side")
        chosen.update(subjects[:take])
    return chosen


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
    """Whole subjects to validation, chosen per class so that each class's validation share of cells is as close
    to `val_fraction` as possible."""
    cells, by_class = _subjects_by_class(records)
    mask = np.zeros(len(records), dtype=bool)
    for label in sorted(by_class):
        subjects = [by_class[label][i] for i in rng.permutation(len(by_class[label]))]
        for subject in _pick_subjects(subjects, [len(cells[s]) for s in subjects], val_fraction):
            mask[cells[subject]] = True
    return mask


def _subjects_by_class(records: Sequence[CellRecord]) -> tuple[dict[str, list[int]], dict[int, list[str]]]:
    """Record indices per subject, and sorted subjects per class (a subject's class is its majority label; C-NMC
    subjects are single-class)."""
    cells: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        cells[record.subject].append(index)
    by_class: dict[int, list[str]] = defaultdict(list)
    for subject in sorted(cells):
        votes = Counter(records[i].label for i in cells[subject])
        by_class[max(votes, key=lambda label: (votes[label], label))].append(subject)
    return cells, by_class


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


_FOLD_STREAM = 11  # folds draw from their own stream: the same folds whatever else the seed drives


def cross_validation_folds(records: Sequence[CellRecord], indices: np.ndarray, folds: int, method: str = "subject",
                           seed: int = 0) -> list[np.ndarray]:
    """`folds` validation sides over `indices` (the non-test records), each a sorted index array; every index
    lands in exactly one. ``subject``: whole patients, dealt per class to the fold holding the fewest of that
    class's cells so far (stratified and patient-disjoint). ``fold``: C-NMC's own numbered folds, which must number
    `folds`. ``image``: each class's cells dealt round the folds (patients leak across folds, as in the paper)."""
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    kept = [records[i] for i in indices]
    if method == "fold":
        assignment = _fold_assignment(kept, folds)
    else:
        rng = np.random.default_rng([seed, _FOLD_STREAM])
        assignment = (_patient_assignment if method == "subject" else _image_assignment)(kept, folds, rng)
    return [indices[assignment == fold] for fold in range(folds)]


def _patient_assignment(records: Sequence[CellRecord], folds: int, rng: np.random.Generator) -> np.ndarray:
    cells, by_class = _subjects_by_class(records)
    assignment = np.full(len(records), -1, dtype=np.int64)
    for label in sorted(by_class):
        subjects = by_class[label]
        if len(subjects) < folds:
            raise DatasetError(f"{folds}-fold cross-validation by patient needs {folds} {CLASS_NAMES[label]} "
                               f"subjects outside the test side (one per fold); found {len(subjects)}; use fewer "
                               f"folds (data.cv_folds) or a smaller data.test_fraction")
        # Largest patients first (shuffled among equals), each to the fold with fewest cells of its class so far:
        # folds come out near equal in cells as well as in patients.
        order = sorted(rng.permutation(len(subjects)), key=lambda i: -len(cells[subjects[i]]))
        held = np.zeros(folds, dtype=np.int64)
        for i in order:
            fold = int(np.argmin(held))
            assignment[cells[subjects[i]]] = fold
            held[fold] += len(cells[subjects[i]])
    return assignment


def _image_assignment(records: Sequence[CellRecord], folds: int, rng: np.random.Generator) -> np.ndarray:
    labels = np.array([r.label for r in records], dtype=np.int64)
    assignment = np.zeros(len(records), dtype=np.int64)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        if len(members) < folds:
            raise DatasetError(f"{folds}-fold cross-validation by image needs {folds} {CLASS_NAMES[label]} cells; "
                               f"found {len(members)}")
        assignment[members] = np.arange(len(members)) % folds
    return assignment


def _fold_assignment(records: Sequence[CellRecord], folds: int) -> np.ndarray:
    numbered = sorted({r.fold for r in records}, key=fold_sort_key)
    if len(numbered) != folds:
        raise DatasetError(f"data.split: fold cross-validates over C-NMC's own folds, and these cells are in "
                           f"{len(numbered)} ({', '.join(numbered) or 'none'}); set data.cv_folds={len(numbered)}")
    position = {fold: number for number, fold in enumerate(numbered)}
    return np.array([position[r.fold] for r in records], dtype=np.int64)
