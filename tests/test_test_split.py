"""The test side: subject-disjoint from train and validation whatever the split, per class, seeded; the C-NMC
preliminary test folder is the test set when present; too few subjects is a clear error."""
from __future__ import annotations

import numpy as np
import pytest

from leukotune.data import CellRecord, DatasetError, prepare_data, split_records, split_subjects
from leukotune.tuner.config import ConfigError, build_study


def _cohort(n_all: int, n_hem: int, cells: int = 5, folds: int = 1) -> list[CellRecord]:
    """`n_all` ALL subjects ("1".."n") and `n_hem` hem subjects ("H1".."Hn"), `cells` cells each."""
    subjects = [(str(i), 1) for i in range(1, n_all + 1)] + [(f"H{i}", 0) for i in range(1, n_hem + 1)]
    return [CellRecord(f"/d/{s}_{c}.bmp", label, s, str(n % folds))
            for n, (s, label) in enumerate(subjects) for c in range(cells)]


def _subjects(records: list[CellRecord], index: np.ndarray) -> set[str]:
    return {records[i].subject for i in index}


# (ALL subjects, hem subjects, split, test fraction, expected test subjects per class (ALL, hem))
CASES = [
    (10, 5, "subject", 0.2, (2, 1)),
    (10, 5, "image", 0.2, (2, 1)),
    (10, 5, "fold", 0.2, (2, 1)),
    (4, 3, "subject", 0.2, (1, 1)),  # at least one per class, even where 20% rounds to 0 or 1
    (3, 2, "image", 0.2, (1, 1)),  # an image split needs one subject left per class
    (20, 10, "subject", 0.5, (10, 5)),
    (5, 3, "subject", 0.9, (3, 1)),  # capped: the subject split keeps two subjects of each class
]


@pytest.mark.parametrize("n_all, n_hem, method, fraction, expected", CASES)
def test_test_side_is_whole_subjects_per_class_and_disjoint(n_all, n_hem, method, fraction, expected) -> None:
    records = _cohort(n_all, n_hem, folds=3 if method == "fold" else 1)
    split = split_records(records, method, val_fraction=0.25, seed=1, test_fraction=fraction)
    test = _subjects(records, split.test)
    assert split.test_source == "subjects"
    assert (sum(not s.startswith("H") for s in test), sum(s.startswith("H") for s in test)) == expected
    assert not test & (_subjects(records, split.train) | _subjects(records, split.val))
    everything = np.sort(np.concatenate([split.train, split.val, split.test]))
    assert np.array_equal(everything, np.arange(len(records)))  # a partition: every cell on exactly one side


def test_image_split_leaks_between_train_and_val_but_never_into_test() -> None:
    records = _cohort(10, 5, cells=20)
    split = split_records(records, "image", seed=0, test_fraction=0.2)
    shared = _subjects(records, split.train) & _subjects(records, split.val)
    assert shared  # the paper's leaky validation: one patient on both sides
    assert not _subjects(records, split.test) & (_subjects(records, split.train) | _subjects(records, split.val))


def test_test_side_is_seeded_and_the_same_for_every_validation_split() -> None:
    records = _cohort(12, 6)
    by_method = {m: _subjects(records, split_records(records, m, seed=3, test_fraction=0.2).test)
                 for m in ("subject", "image")}
    assert by_method["subject"] == by_method["image"]  # so the image split's leak is measured on the same patients
    again = _subjects(records, split_records(records, "subject", seed=3, test_fraction=0.2).test)
    assert again == by_method["subject"]
    others = {frozenset(_subjects(records, split_records(records, seed=s, test_fraction=0.2).test)) for s in range(6)}
    assert len(others) > 1


def test_no_test_fraction_keeps_the_old_split() -> None:
    records = _cohort(8, 4)
    old, new = split_records(records, seed=5), split_records(records, seed=5, test_fraction=0.0)
    assert new.test.size == 0 and new.test_source == "none"
    assert np.array_equal(old.val, new.val) and np.array_equal(old.train, new.train)


def test_prelim_folder_is_the_test_side_whatever_the_fraction() -> None:
    records = _cohort(6, 3) + [CellRecord(f"/t/{i}.bmp", i % 2, f"{'' if i % 2 else 'H'}9{i}", "prelim")
                               for i in range(6)]
    for fraction in (0.0, 0.2):
        split = split_records(records, "subject", seed=0, test_fraction=fraction)
        assert split.test_source == "prelim"
        assert {records[i].fold for i in split.test} == {"prelim"}
        assert not {records[i].fold for i in np.concatenate([split.train, split.val])} & {"prelim"}


@pytest.mark.parametrize("n_all, n_hem, method, message", [
    (5, 2, "subject", "hem has 2 subject"),  # one to test leaves one: a subject split needs two
    (5, 1, "image", "hem has 1 subject"),
])
def test_too_few_subjects_for_a_test_side_is_a_clear_error(n_all, n_hem, method, message) -> None:
    with pytest.raises(DatasetError, match=f"{message}.*test_fraction 0"):
        split_records(_cohort(n_all, n_hem), method, test_fraction=0.2)


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_bad_fraction_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        split_records(_cohort(4, 4), test_fraction=fraction)


def test_schema_defaults_and_ranges() -> None:
    study = build_study({})
    assert study.data.test_fraction == 0.2 and study.tune.test_top_k == 3
    for bad in ({"data": {"test_fraction": 0.95}}, {"data": {"test_fraction": -0.1}}, {"tune": {"test_top_k": -1}}):
        with pytest.raises(ConfigError, match="test_fraction|test_top_k"):
            build_study(bad)


def test_prepare_data_counts_and_lists_subjects_per_side(synthetic_dataset, tmp_path) -> None:
    data = prepare_data(synthetic_dataset, size=16, color="gray", split="image", cache_dir=tmp_path,
                        test_fraction=0.2)
    sides = split_subjects(data)
    assert set(sides["test"]) and not set(sides["test"]) & (set(sides["train"]) | set(sides["val"]))
    assert sum(data.counts["test"].values()) == len(data.test_idx) > 0
    assert data.counts["test"]["all"] > 0 and data.counts["test"]["hem"] > 0
    assert data.test_source == "subjects" and data.split == "image"
