"""The C-NMC 2019 layout: which files are cells, with their label, subject and fold, and which were skipped (and why).

Training cells live in ``training_data/fold_<k>/{all,hem}/``, named ``UID_<subject>_<image>_<cell>_all.bmp`` for
leukemic blasts and ``UID_H<subject>_<image>_<cell>_hem.bmp`` for normal cells ("13" and "H13" are two people).
The preliminary test folder names its images ``1.bmp, 2.bmp, ...`` and a CSV ``Patient_ID,new_names,labels`` maps
them back to the original names.
"""
from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Iterator

from .errors import DatasetError

__all__ = [
    "CLASS_NAMES", "IMAGE_EXTENSIONS", "LABELS", "PRELIM_FOLD", "CellRecord", "Manifest", "SkippedFile",
    "fold_sort_key", "load_manifest", "parse_cell_name",
]

LABELS = {"hem": 0, "all": 1}
CLASS_NAMES = ("hem", "all")  # indexed by label
PRELIM_FOLD = "prelim"
IMAGE_EXTENSIONS = frozenset({".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff"})
# Files that operating systems and archivers leave behind; they are not data, so they are not even "skipped".
_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})
_CSV_COLUMNS = ("Patient_ID", "new_names", "labels")

_NAME_RE = re.compile(r"UID_(?P<normal>H?)(?P<number>\d+)(?:_\d+)+_(?P<label>all|hem)", re.IGNORECASE)
_FOLD_RE = re.compile(r"fold_(\w+)", re.IGNORECASE)


@dataclass(frozen=True)
class CellRecord:
    """One labelled cell image: `label` 1 = ALL, 0 = hem; `fold` is "0"/"1"/"2" or "prelim"."""

    path: str
    label: int
    subject: str
    fold: str


@dataclass(frozen=True)
class SkippedFile:
    """A file that looked like data but was left out, with the reason a user needs to fix it."""

    path: str
    reason: str


@dataclass
class Manifest:
    """Every usable cell below `root` (sorted by path) and every file that was skipped."""

    records: list[CellRecord]
    skipped: list[SkippedFile] = field(default_factory=list)
    root: str = ""

    def class_counts(self) -> dict[str, int]:
        """Cells per class, e.g. ``{"all": 30, "hem": 30}`` (both keys always present)."""
        counts = Counter(r.label for r in self.records)
        return {name: counts.get(LABELS[name], 0) for name in ("all", "hem")}

    def subjects(self) -> list[str]:
        return sorted({r.subject for r in self.records})

    def folds(self) -> list[str]:
        return sorted({r.fold for r in self.records}, key=fold_sort_key)

    def subject_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.subject for r in self.records).items()))

    def fold_counts(self) -> dict[str, int]:
        counts = Counter(r.fold for r in self.records)
        return {fold: counts[fold] for fold in self.folds()}


def fold_sort_key(fold: str) -> tuple[int, int, str]:
    """Numbered folds in numeric order, then named ones ("prelim") alphabetically."""
    return (0, int(fold), "") if fold.isdigit() else (1, 0, fold)


def parse_cell_name(name: str) -> tuple[str, int]:
    """Subject and label from a C-NMC file name: ``UID_13_10_1_all.bmp`` -> ("13", 1) and
    ``UID_H10_100_1_hem.bmp`` -> ("H10", 0).

    Raises ValueError naming the problem when the name carries no subject/label or contradicts itself.
    """
    path = PurePath(name)
    stem = path.name
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        stem = path.stem
    elif path.suffix:
        raise ValueError(f"{path.name!r} is not an image file name ({path.suffix})")
    match = _NAME_RE.fullmatch(stem)
    if match is None:
        raise ValueError(f"{path.name!r} carries no subject/label: expected UID_<subject>_<image>_<cell>_<all|hem>")
    normal = bool(match["normal"])
    subject = ("H" if normal else "") + match["number"]
    label = LABELS[match["label"].lower()]
    # Normal donors are the "H" subjects; a name mixing the two is corrupt, and guessing would mislabel a cell.
    if normal != (label == LABELS["hem"]):
        raise ValueError(f"{path.name!r}: subject {subject} and suffix _{match['label']} disagree "
                         "(H subjects are normal, hem; the others ALL)")
    return subject, label


def load_manifest(root: str | os.PathLike[str]) -> Manifest:
    """Index the cells below `root`, which may be the dataset root (holding ``training_data/`` and optionally a
    labelled prelim test folder), the ``training_data`` folder itself, or a folder laid out ``{all,hem}/...``.

    Raises DatasetError when `root` is missing or holds no usable cell.
    """
    base = Path(root).expanduser()
    if not base.exists():
        raise DatasetError(f"{base}: dataset folder does not exist")
    if not base.is_dir():
        raise DatasetError(f"{base}: not a folder (expected the C-NMC dataset root)")
    base = base.resolve()
    records: list[CellRecord] = []
    skipped: list[SkippedFile] = []
    training = base / "training_data"
    _scan_dataset_dir(training if training.is_dir() else base, records, skipped, default_fold=_fold_of(base))
    for labels_csv in _find_label_csvs(base):
        _scan_labelled_folder(labels_csv, records, skipped)
    if not records:
        raise DatasetError(_nothing_usable_message(base, skipped))
    records.sort(key=lambda r: r.path)
    skipped.sort(key=lambda s: s.path)
    return Manifest(records=records, skipped=skipped, root=str(base))


def _nothing_usable_message(base: Path, skipped: list[SkippedFile]) -> str:
    message = (f"{base}: no usable cell images; expected training_data/fold_<k>/{{all,hem}}/UID_<subject>_..."
               f"_<all|hem>.bmp (or fold_<k>/ or all/ + hem/ folders directly)")
    if skipped:
        examples = "; ".join(f"{Path(s.path).name}: {s.reason}" for s in skipped[:3])
        message += f"; {len(skipped)} files skipped, e.g. {examples}"
    return message


def _is_junk(name: str) -> bool:
    return name.startswith(".") or name.lower() in _JUNK_NAMES


def _fold_of(directory: Path) -> str:
    match = _FOLD_RE.fullmatch(directory.name)
    return match[1] if match else "0"


def _walk_files(directory: Path) -> Iterator[Path]:
    """Every non-junk file below `directory`, in sorted order, without following directory links."""
    for current, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not _is_junk(d))
        for name in sorted(files):
            if not _is_junk(name):
                yield Path(current) / name


def _children(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if not _is_junk(p.name))


def _skip_all(directory: Path, reason: str, skipped: list[SkippedFile]) -> None:
    skipped.extend(SkippedFile(str(p), reason) for p in _walk_files(directory))


def _scan_dataset_dir(directory: Path, records: list[CellRecord], skipped: list[SkippedFile],
                      default_fold: str) -> None:
    """`directory` holds fold_<k>/ folders, or all/ and hem/ folders directly (one fold, named after it)."""
    children = _children(directory)
    if any(c.is_dir() and _FOLD_RE.fullmatch(c.name) for c in children):
        for child in children:
            if child.is_dir() and (match := _FOLD_RE.fullmatch(child.name)):
                _scan_label_folders(child, match[1], records, skipped)
            elif child.is_dir():
                _skip_all(child, "not inside a fold_<k> folder", skipped)
            else:
                skipped.append(SkippedFile(str(child), "not inside a fold_<k> folder"))
    elif any(c.is_dir() and c.name.lower() in LABELS for c in children):
        _scan_label_folders(directory, default_fold, records, skipped)


def _scan_label_folders(directory: Path, fold: str, records: list[CellRecord], skipped: list[SkippedFile]) -> None:
    """Cells in `directory`/all and `directory`/hem; the folder's label must agree with each file name's."""
    for child in _children(directory):
        folder_label = LABELS.get(child.name.lower())
        if not child.is_dir():
            skipped.append(SkippedFile(str(child), "not inside an all/ or hem/ folder"))
        elif folder_label is None:
            _skip_all(child, f"unknown label folder {child.name!r} (expected all or hem)", skipped)
        else:
            for path in _walk_files(child):
                record = _record_from_name(path, fold, skipped)
                if record is None:
                    continue
                if record.label != folder_label:
                    skipped.append(SkippedFile(str(path), f"in folder {child.name!r} but the file name says "
                                                          f"{CLASS_NAMES[record.label]}"))
                else:
                    records.append(record)


def _record_from_name(path: Path, fold: str, skipped: list[SkippedFile]) -> CellRecord | None:
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        skipped.append(SkippedFile(str(path), f"not an image file (extension {path.suffix or 'missing'})"))
        return None
    try:
        subject, label = parse_cell_name(path.name)
    except ValueError as exc:
        skipped.append(SkippedFile(str(path), str(exc)))
        return None
    return CellRecord(path=str(path), label=label, subject=subject, fold=fold)


def _find_label_csvs(base: Path) -> list[Path]:
    """CSV files below `base` whose header is the prelim test set's ``Patient_ID,new_names,labels``."""
    found = []
    for path in _walk_files(base):
        if path.suffix.lower() == ".csv" and _csv_header(path) is not None:
            found.append(path)
    return found


def _csv_header(path: Path) -> dict[str, str] | None:
    """Map of our column names to the file's spelling, or None when it is not a labels CSV."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError):
        return None
    spelled = {h.strip().lower(): h for h in header}
    if not all(c.lower() in spelled for c in _CSV_COLUMNS):
        return None
    return {c: spelled[c.lower()] for c in _CSV_COLUMNS}


def _images_dir_for(labels_csv: Path) -> Path:
    # The real download keeps C-NMC_test_prelim_phase_data_labels.csv beside the folder of that name.
    beside = labels_csv.with_name(labels_csv.stem.removesuffix("_labels"))
    return beside if beside.is_dir() else labels_csv.parent


def _scan_labelled_folder(labels_csv: Path, records: list[CellRecord], skipped: list[SkippedFile]) -> None:
    """Cells of the prelim test folder: label from the CSV, subject from the original name in Patient_ID."""
    columns = _csv_header(labels_csv)
    assert columns is not None  # only called for files _find_label_csvs accepted
    images_dir = _images_dir_for(labels_csv)
    listed: set[str] = set()
    with open(labels_csv, newline="", encoding="utf-8-sig") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            new_name = (row.get(columns["new_names"]) or "").strip()
            path = images_dir / new_name
            listed.add(new_name)
            where = f"{labels_csv.name} line {line}"
            record = _record_from_row(row, columns, path, where, skipped)
            if record is not None:
                records.append(record)
    # Only a folder dedicated to the CSV is checked for unlisted images: a CSV sitting at the dataset root
    # would otherwise report every training image.
    if images_dir != labels_csv.parent:
        for path in _walk_files(images_dir):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.name not in listed:
                skipped.append(SkippedFile(str(path), f"not listed in {labels_csv.name}"))


def _record_from_row(row: dict[str, str], columns: dict[str, str], path: Path, where: str,
                     skipped: list[SkippedFile]) -> CellRecord | None:
    raw_label = (row.get(columns["labels"]) or "").strip()
    original = (row.get(columns["Patient_ID"]) or "").strip()
    if not path.name or not path.is_file():
        skipped.append(SkippedFile(str(path), f"{where}: listed file is missing"))
        return None
    if raw_label not in ("0", "1"):
        skipped.append(SkippedFile(str(path), f"{where}: unknown label {raw_label!r} (expected 1 = ALL, 0 = hem)"))
        return None
    try:
        subject, name_label = parse_cell_name(original)
    except ValueError as exc:
        skipped.append(SkippedFile(str(path), f"{where}: {exc}"))
        return None
    if name_label != int(raw_label):
        skipped.append(SkippedFile(str(path), f"{where}: label {raw_label} disagrees with Patient_ID {original!r}"))
        return None
    return CellRecord(path=str(path), label=int(raw_label), subject=subject, fold=PRELIM_FOLD)
