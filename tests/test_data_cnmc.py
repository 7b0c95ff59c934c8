"""The C-NMC layout: file names to subjects and labels, the accepted folder layouts, skipped files, `data check`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from leukotune.data import DatasetError, check_dataset, format_report, load_manifest, parse_cell_name

NAME_CASES = [
    ("UID_13_10_1_all.bmp", "13", 1),
    ("UID_H10_100_1_hem.bmp", "H10", 0),
    ("UID_H13_25_2_hem.bmp", "H13", 0),  # a different person from "13"
    ("UID_34_21_20_all.bmp", "34", 1),
    ("UID_57_29_1_all.BMP", "57", 1),  # extension case does not matter
    ("uid_h4_7_1_HEM.png", "H4", 0),
    ("UID_5_1_1_all.tiff", "5", 1),
    ("UID_5_1_1_all.jpeg", "5", 1),
    ("UID_13_10_1_all", "13", 1),  # CSV Patient_ID values may lack the extension
    ("some/dir/UID_13_10_1_all.bmp", "13", 1),
]

BAD_NAMES = [
    ("1.bmp", "carries no subject"),
    ("cell.bmp", "carries no subject"),
    ("UID_13_all.bmp", "carries no subject"),  # no image/cell numbers
    ("UID_X13_1_1_all.bmp", "carries no subject"),
    ("UID_13_1_1_blast.bmp", "carries no subject"),
    ("UID_H13_1_1_all.bmp", "disagree"),  # H subjects are normal donors
    ("UID_13_1_1_hem.bmp", "disagree"),
    ("UID_13_1_1_all.txt", "not an image"),
]


@pytest.mark.parametrize(("name", "subject", "label"), NAME_CASES)
def test_parse_cell_name(name: str, subject: str, label: int) -> None:
    assert parse_cell_name(name) == (subject, label)


@pytest.mark.parametrize(("name", "reason"), BAD_NAMES)
def test_parse_cell_name_rejects(name: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_cell_name(name)


def _touch(path: Path, content: bytes = b"x") -> Path:
    """Manifests never decode pixels, so placeholder bytes are enough here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _tree(root: Path, files: list[str]) -> Path:
    for name in files:
        _touch(root / name)
    return root


GOOD_TREE = [
    "training_data/fold_0/all/UID_1_1_1_all.bmp",
    "training_data/fold_0/all/UID_2_1_1_all.bmp",
    "training_data/fold_0/hem/UID_H1_1_1_hem.bmp",
    "training_data/fold_1/all/UID_3_1_1_all.bmp",
    "training_data/fold_1/hem/UID_H2_1_1_hem.bmp",
]


def test_real_sample_counts(cnmc_sample: Path) -> None:
    manifest = load_manifest(cnmc_sample)
    assert manifest.class_counts() == {"all": 30, "hem": 30}
    assert len(manifest.subjects()) == 37
    assert manifest.folds() == ["0"]
    assert manifest.skipped == []
    assert {"13", "H13"} <= set(manifest.subjects())
    assert [r.path for r in manifest.records] == sorted(r.path for r in manifest.records)
    record = next(r for r in manifest.records if r.path.endswith("UID_13_10_1_all.bmp"))
    assert (record.subject, record.label, record.fold) == ("13", 1, "0")


def test_real_sample_accepts_training_data_and_fold_folder(cnmc_sample: Path) -> None:
    whole = load_manifest(cnmc_sample).records
    assert load_manifest(cnmc_sample / "training_data").records == whole
    assert load_manifest(cnmc_sample / "training_data" / "fold_0").records == whole


def test_layouts_agree(tmp_path: Path) -> None:
    root = _tree(tmp_path, GOOD_TREE)
    manifest = load_manifest(root)
    assert manifest.fold_counts() == {"0": 3, "1": 2}
    assert manifest.class_counts() == {"all": 3, "hem": 2}
    assert manifest.subject_counts() == {"1": 1, "2": 1, "3": 1, "H1": 1, "H2": 1}
    assert load_manifest(root / "training_data").records == manifest.records
    flat = load_manifest(root / "training_data" / "fold_1")
    assert [(r.subject, r.fold) for r in flat.records] == [("3", "1"), ("H2", "1")]


def test_plain_all_hem_folder_is_fold_0(tmp_path: Path) -> None:
    root = _tree(tmp_path / "cells", ["all/UID_1_1_1_all.png", "hem/UID_H1_1_1_hem.jpg"])
    assert {r.fold for r in load_manifest(root).records} == {"0"}


def test_problem_files_are_skipped_with_reasons(tmp_path: Path) -> None:
    root = _tree(tmp_path, GOOD_TREE + [
        "training_data/fold_0/all/1.bmp",
        "training_data/fold_0/all/UID_H9_1_1_hem.bmp",  # hem cell in the all folder
        "training_data/fold_0/all/notes.txt",
        "training_data/fold_0/blasts/UID_7_1_1_all.bmp",
        "training_data/fold_0/stray.bmp",
        "training_data/extra/all/UID_8_1_1_all.bmp",
    ])
    manifest = load_manifest(root)
    reasons = {Path(s.path).relative_to(root).as_posix(): s.reason for s in manifest.skipped}
    assert len(manifest.records) == len(GOOD_TREE)
    assert "carries no subject" in reasons["training_data/fold_0/all/1.bmp"]
    assert "in folder 'all' but the file name says hem" in reasons["training_data/fold_0/all/UID_H9_1_1_hem.bmp"]
    assert "not an image file" in reasons["training_data/fold_0/all/notes.txt"]
    assert "unknown label folder 'blasts'" in reasons["training_data/fold_0/blasts/UID_7_1_1_all.bmp"]
    assert "not inside an all/ or hem/ folder" in reasons["training_data/fold_0/stray.bmp"]
    assert "not inside a fold_<k> folder" in reasons["training_data/extra/all/UID_8_1_1_all.bmp"]
    assert len(reasons) == 6


def test_junk_files_are_ignored_silently(tmp_path: Path) -> None:
    root = _tree(tmp_path, GOOD_TREE + [
        "training_data/fold_0/all/.DS_Store",
        "training_data/fold_0/all/Thumbs.db",
        "training_data/fold_0/hem/desktop.ini",
        "training_data/fold_0/all/._UID_1_1_1_all.bmp",
        "training_data/__MACOSX/fold_0/all/UID_1_1_1_all.bmp",
        "training_data/.hidden/hem/UID_H1_1_1_hem.bmp",
    ])
    manifest = load_manifest(root)
    assert len(manifest.records) == len(GOOD_TREE)
    assert manifest.skipped == []


def _prelim(root: Path) -> Path:
    """The prelim test folder as C-NMC ships it: numbered images plus a labels CSV beside the folder."""
    folder = root / "validation_data" / "C-NMC_test_prelim_phase_data"
    for name in ("1.bmp", "2.bmp", "3.bmp", "4.bmp", "5.bmp", "6.bmp"):
        _touch(folder / name)
    rows = [
        "Patient_ID,new_names,labels",
        "UID_57_29_1_all.bmp,1.bmp,1",
        "UID_H49_1_2_hem.bmp,2.bmp,0",
        "UID_58_3_1_all.bmp,99.bmp,1",  # names a missing file
        "UID_59_1_1_all.bmp,3.bmp,2",  # unknown label
        "UID_H50_1_1_hem.bmp,4.bmp,1",  # label contradicts the original name
        "mystery.bmp,5.bmp,1",  # original name carries no subject
    ]
    (folder.parent / "C-NMC_test_prelim_phase_data_labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_prelim_folder_with_labels_csv(tmp_path: Path) -> None:
    root = _tree(tmp_path, GOOD_TREE)
    folder = _prelim(root)
    manifest = load_manifest(root)
    prelim = [r for r in manifest.records if r.fold == "prelim"]
    assert [(Path(r.path).name, r.subject, r.label) for r in prelim] == [("1.bmp", "57", 1), ("2.bmp", "H49", 0)]
    reasons = {Path(s.path).name: s.reason for s in manifest.skipped}
    assert "line 4: listed file is missing" in reasons["99.bmp"]
    assert "unknown label '2'" in reasons["3.bmp"]
    assert "disagrees" in reasons["4.bmp"]
    assert "carries no subject" in reasons["5.bmp"]
    assert "not listed" in reasons["6.bmp"]
    assert manifest.folds() == ["0", "1", "prelim"]
    assert all(Path(r.path).parent == folder for r in prelim)


def test_prelim_folder_alone(tmp_path: Path) -> None:
    _prelim(tmp_path)
    manifest = load_manifest(tmp_path / "validation_data")
    assert manifest.class_counts() == {"all": 1, "hem": 1}


@pytest.mark.parametrize("make", [
    lambda p: p / "missing",
    lambda p: p,  # empty folder
    lambda p: _tree(p, ["training_data/fold_0/all/bad_name.bmp"]),
    lambda p: _touch(p / "file.bmp"),
])
def test_nothing_usable_raises(tmp_path: Path, make) -> None:
    root = make(tmp_path)
    with pytest.raises(DatasetError, match=str(root.name)):
        load_manifest(root)


def test_nothing_usable_message_summarises_skips(tmp_path: Path) -> None:
    _tree(tmp_path, ["training_data/fold_0/all/bad_name.bmp"])
    with pytest.raises(DatasetError, match="1 files skipped.*carries no subject"):
        load_manifest(tmp_path)


def _bmp(path: Path, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (80, 30, 90)).save(path)


def test_check_real_sample(cnmc_sample: Path) -> None:
    report = check_dataset(cnmc_sample)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["usable"] is True
    assert data["counts"] == {"all": 30, "hem": 30}
    assert data["subjects"] == 37
    assert data["folds"] == {"0": {"all": 30, "hem": 30}}
    assert data["sizes"] == {"450x450": 60} and data["modes"] == {"RGB": 60}
    assert data["skipped"] == [] and data["problems"] == []
    assert "30 ALL, 30 hem; 37 subjects" in format_report(report)


def test_check_reports_broken_and_odd_files(tmp_path: Path) -> None:
    for name in ("UID_1_1_1_all.bmp", "UID_2_1_1_all.bmp", "UID_H1_1_1_hem.bmp", "UID_H2_1_1_hem.bmp"):
        _bmp(tmp_path / "training_data" / "fold_0" / name.rsplit("_", 1)[1][:3] / name)
    _touch(tmp_path / "training_data/fold_0/all/UID_3_1_1_all.bmp", b"")
    _touch(tmp_path / "training_data/fold_0/all/junk_name.bmp")
    report = check_dataset(tmp_path)
    assert report.usable
    assert report.counts == {"all": 2, "hem": 2}
    assert report.sizes == {"32x32": 4}
    assert {Path(s.path).name: s.reason for s in report.skipped} == {
        "UID_3_1_1_all.bmp": "empty file (0 bytes)",
        "junk_name.bmp": "'junk_name.bmp' carries no subject/label: expected UID_<subject>_<image>_<cell>_<all|hem>",
    }
    assert any("2 files skipped" in p for p in report.problems)
    assert any("other than 450x450" in p for p in report.problems)
    assert "empty file" in format_report(report)


def test_check_unusable(tmp_path: Path) -> None:
    _bmp(tmp_path / "training_data/fold_0/all/UID_1_1_1_all.bmp")
    report = check_dataset(tmp_path)
    assert not report.usable
    assert any("no readable hem cells" in p for p in report.problems)
    missing = check_dataset(tmp_path / "nope")
    assert not missing.usable and "does not exist" in missing.problems[0]
    assert "usable: NO" in format_report(missing)


def test_data_package_imports_only_allowed_libraries() -> None:
    """`data/` stays free of ray and mlflow (and anything else heavy), so it loads in a second anywhere."""
    import ast
    import sys

    allowed = {"numpy", "PIL", "torch", "yaml", "data"} | set(sys.stdlib_module_names)
    for source in (Path(__file__).resolve().parents[1] / "data").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            assert set(roots) <= allowed, f"{source.name} imports {roots}"
