"""The synthetic stand-in: the real layout and file format, parseable names, determinism, and a class signal."""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukotune.data import load_manifest, parse_cell_name, write_synthetic_dataset


def _bmps(root: Path) -> list[Path]:
    return sorted(root.glob("training_data/fold_*/*/*.bmp"))


def test_layout_and_names(synthetic_dataset: Path) -> None:
    files = _bmps(synthetic_dataset)
    assert len(files) == 24
    assert {f.parent.parent.name for f in files} == {"fold_0", "fold_1", "fold_2"}
    for path in files:
        subject, label = parse_cell_name(path.name)
        assert path.parent.name == ("all" if label == 1 else "hem")
        assert subject.startswith("H") == (label == 0)
    manifest = load_manifest(synthetic_dataset)
    assert len(manifest.records) == 24 and manifest.skipped == []
    assert manifest.class_counts() == {"all": 16, "hem": 8}  # 4 ALL subjects to 2 hem, as C-NMC's ~2:1


def test_files_are_450px_24bit_bmp(synthetic_dataset: Path) -> None:
    for path in _bmps(synthetic_dataset)[:4]:
        header = path.read_bytes()[:30]
        assert header[:2] == b"BM" and struct.unpack("<H", header[28:30])[0] == 24
        with Image.open(path) as img:
            assert (img.format, img.mode, img.size) == ("BMP", "RGB", (450, 450))
            pixels = np.asarray(img)
        assert pixels[0, 0].max() == 0 and pixels.max() > 0  # one cell on black
        foreground = pixels[pixels.max(axis=2) > 0]
        assert (foreground[:, 2] > foreground[:, 1]).mean() > 0.95  # purple: blue over green


def test_summary_matches_the_files(tmp_path: Path) -> None:
    summary = write_synthetic_dataset(tmp_path, subjects=7, cells_per_subject=2, size=48, folds=2)
    manifest = load_manifest(tmp_path)
    assert summary["cells"] == len(manifest.records) == 14
    assert (summary["all"], summary["hem"]) == (manifest.class_counts()["all"], manifest.class_counts()["hem"])
    assert summary["subjects"] == len(manifest.subjects()) == 7
    assert summary["folds"] == manifest.fold_counts()
    # Every fold holds both classes, so a fold split has something to validate on.
    assert all({r.label for r in manifest.records if r.fold == fold} == {0, 1} for fold in manifest.folds())


def _digest(root: Path) -> str:
    sha = hashlib.sha256()
    for path in _bmps(root):
        sha.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return sha.hexdigest()


def test_deterministic_per_seed(tmp_path: Path) -> None:
    options = dict(subjects=3, cells_per_subject=2, size=64)
    first = write_synthetic_dataset(tmp_path / "a", seed=5, **options)
    again = write_synthetic_dataset(tmp_path / "b", seed=5, **options)
    write_synthetic_dataset(tmp_path / "c", seed=6, **options)
    assert {k: v for k, v in first.items() if k != "root"} == {k: v for k, v in again.items() if k != "root"}
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_all_cells_are_larger_on_average(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path, subjects=12, cells_per_subject=6, size=96, seed=0)
    areas: dict[int, list[float]] = {0: [], 1: []}
    for record in load_manifest(tmp_path).records:
        with Image.open(record.path) as img:
            areas[record.label].append(float((np.asarray(img).max(axis=2) > 0).mean()))
    all_mean, hem_mean = np.mean(areas[1]), np.mean(areas[0])
    assert all_mean > 1.1 * hem_mean
    # ...but the classes overlap: size alone must not separate them.
    assert min(areas[1]) < max(areas[0])


@pytest.mark.parametrize("options", [dict(subjects=1), dict(cells_per_subject=0), dict(folds=0), dict(size=8)])
def test_rejects_bad_arguments(tmp_path: Path, options: dict) -> None:
    with pytest.raises(ValueError):
        write_synthetic_dataset(tmp_path, **options)


@pytest.mark.parametrize(("subjects", "all_subjects"), [(2, 1), (4, 2), (6, 4), (12, 8), (30, 20)])
def test_about_two_all_subjects_per_hem_subject(tmp_path: Path, subjects: int, all_subjects: int) -> None:
    # Tiny sets keep two subjects per class from four on, so the default subject split can run on them.
    summary = write_synthetic_dataset(tmp_path, subjects=subjects, cells_per_subject=1, size=32)
    assert (summary["subjects_all"], summary["subjects_hem"]) == (all_subjects, subjects - all_subjects)
