"""Splits: subject-disjoint and stratified by default, by image or by fold on request, seeded; prepare_data refuses a
split that leaves a class out of either side."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from leukotune.data import CellRecord, DatasetError, load_manifest, prepare_data, split_records


def _cohort(subject_sizes: dict[str, int], folds: int = 1) -> list[CellRecord]:
    """Records for subjects named like C-NMC's ("H..." = hem), with the given number of cells each."""
    records = []
    for n, (subject, cells) in enumerate(subject_sizes.items()):
        label = 0 if subject.startswith("H") else 1
        for cell in range(cells):
            records.append(CellRecord(f"/d/{subject}_{cell}.bmp", label, subject, str(n % folds)))
    return records


def _sizes(seed: int = 0) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    sizes = {str(i): int(rng.integers(5, 60)) for i in range(1, 21)}
    sizes |= {f"H{i}": int(rng.integers(5, 60)) for i in range(1, 11)}
    sizes["13"], sizes["H13"] = 30, 30  # same number, different people
    return sizes


def _subjects(records: list[CellRecord], index: np.ndarray) -> set[str]:
    return {records[i].subject for i in index}


def _assert_partition(split, n: int) -> None:
    assert np.intersect1d(split.train, split.val).size == 0
    assert np.array_equal(np.sort(np.concatenate([split.train, split.val])), np.arange(n))


def test_real_sample_subject_split_is_disjoint(cnmc_sample: Path) -> None:
    records = load_manifest(cnmc_sample).records
    for seed in range(5):
        split = split_records(records, seed=seed)
        _assert_partition(split, len(records))
        assert not _subjects(records, split.train) & _subjects(records, split.val)
        assert {records[i].label for i in split.val} == {0, 1}
        assert {records[i].label for i in split.train} == {0, 1}


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.35])
def test_subject_split_is_disjoint_and_stratified(seed: int, fraction: float) -> None:
    records = _cohort(_sizes(seed))
    split = split_records(records, "subject", val_fraction=fraction, seed=seed)
    _assert_partition(split, len(records))
    assert not _subjects(records, split.train) & _subjects(records, split.val)
    labels = np.array([r.label for r in records])
    for label in (0, 1):
        share = np.isin(split.val, np.flatnonzero(labels == label)).sum() / (labels == label).sum()
        assert abs(share - fraction) < 0.08, (label, share)
        assert {records[i].subject for i in split.val if labels[i] == label}
        assert {records[i].subject for i in split.train if labels[i] == label}


def test_two_subjects_per_class_gives_one_each_side() -> None:
    records = _cohort({"1": 50, "2": 3, "H1": 40, "H2": 2})
    split = split_records(records, val_fraction=0.01)
    assert len(_subjects(records, split.val)) == 2 and len(_subjects(records, split.train)) == 2


def test_lone_subject_of_a_class_stays_in_train() -> None:
    records = _cohort({"1": 5, "2": 5, "3": 5, "H1": 9})
    split = split_records(records)
    assert "H1" in _subjects(records, split.train)
    assert {records[i].label for i in split.val} == {1}


def test_image_split_is_stratified_by_image_not_subject() -> None:
    records = _cohort({"1": 100, "2": 100, "H1": 50})
    split = split_records(records, "image", val_fraction=0.2, seed=3)
    _assert_partition(split, len(records))
    assert Counter(records[i].label for i in split.val) == {1: 40, 0: 10}
    assert _subjects(records, split.val) == _subjects(records, split.train) == {"1", "2", "H1"}


def test_fold_split() -> None:
    records = _cohort({"1": 4, "2": 4, "3": 4, "H1": 4, "H2": 4, "H3": 4}, folds=3)
    records.append(CellRecord("/d/prelim.bmp", 1, "57", "prelim"))
    default = split_records(records, "fold")
    assert {records[i].fold for i in default.val} == {"2"}  # the last numbered fold, never prelim
    # The preliminary test folder is the test side: it never trains (prelim is the last record here).
    assert [records[i].fold for i in default.test] == ["prelim"] and default.test_source == "prelim"
    chosen = split_records(records, "fold", val_fold="0")
    assert {records[i].fold for i in chosen.val} == {"0"}
    _assert_partition(chosen, len(records) - 1)
    with pytest.raises(DatasetError, match="folds: 0, 1, 2;|folds: 0, 1, 2$"):
        split_records(records, "fold", val_fold="7")


def test_fold_split_needs_two_folds(cnmc_sample: Path) -> None:
    with pytest.raises(DatasetError, match=r"at least two folds; found \['0'\]"):
        split_records(load_manifest(cnmc_sample).records, "fold")


@pytest.mark.parametrize("method", ["subject", "image"])
def test_seeded_and_deterministic(method: str) -> None:
    records = _cohort(_sizes())
    first, again = split_records(records, method, seed=11), split_records(records, method, seed=11)
    assert np.array_equal(first.val, again.val) and np.array_equal(first.train, again.train)
    others = [split_records(records, method, seed=s).val for s in range(5)]
    assert len({tuple(v) for v in others}) > 1


def test_rejects_bad_arguments() -> None:
    records = _cohort({"1": 3, "2": 3, "H1": 3, "H2": 3})
    with pytest.raises(ValueError, match="valid: subject, image, fold"):
        split_records(records, "patient")
    for fraction in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match="val_fraction"):
            split_records(records, val_fraction=fraction)


def test_prepare_data_on_real_sample(cnmc_sample: Path, tmp_path: Path) -> None:
    prepared = prepare_data(cnmc_sample, size=32, color="rgb", cache_dir=tmp_path)
    assert prepared.images.shape == (60, 3, 32, 32)
    assert prepared.counts["total"] == {"all": 30, "hem": 30}
    assert not set(prepared.subjects[prepared.train_idx]) & set(prepared.subjects[prepared.val_idx])
    assert len(prepared.fingerprint) == 16
    assert prepared.fingerprint == prepare_data(cnmc_sample, size=32, color="gray", cache_dir=tmp_path).fingerprint


def test_prepare_data_refuses_a_missing_class(synthetic_dataset: Path, tmp_path: Path) -> None:
    # Two hem subjects: an image split keeps hem on both sides, a fold split with one hem-free fold cannot.
    prepared = prepare_data(synthetic_dataset, size=16, color="gray", split="image", cache_dir=tmp_path)
    assert prepared.counts["val"]["hem"] > 0
    folds_without_hem = [f for f in ("0", "1", "2")
                         if not any(r.fold == f and r.label == 0 for r in prepared.records)]
    assert folds_without_hem
    with pytest.raises(DatasetError, match="val side of the 'fold' split has no hem cells"):
        prepare_data(synthetic_dataset, size=16, color="gray", split="fold", val_fold=folds_without_hem[0],
                     cache_dir=tmp_path)
