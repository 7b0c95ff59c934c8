"""The results file of `leukotune predict --out`: a CSV or Parquet table written part by part while Ray Data runs,
and read back to resume.

While a run goes, each finished batch of cells becomes one part file in `<out>.parts/` (`part-000007.csv`), written
to a temporary name and renamed, so a killed run leaves only whole parts behind. When every cell is done the parts
and any earlier `<out>` are merged into `<out>` (again through a temporary file) and the folder is removed. A rerun
reads `<out>` and the parts first: a cell that already has a class is not predicted again, a cell that was
unreadable is tried again, and the merge keeps one row per file (the newest), so no cell is lost or counted twice.
Pure Python and pyarrow; no Ray.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
# One row per image file: its class and P(ALL), or why it could not be read; `model` names what predicted it.
COLUMNS = ("file", "class", "p_all", "error", "model")
SCHEMA = pa.schema([("file", pa.string()), ("class", pa.string()), ("p_all", pa.float64()),
                    ("error", pa.string()), ("model", pa.string())])
TEMP_SUFFIX = ".tmp"

Row = dict[str, Any]


class BatchOutputError(ValueError):
    """--out cannot hold this run's results (an unknown suffix, a table of another shape, another model's rows)."""


@dataclass(frozen=True)
class BatchOutput:
    """`path` (the merged table) and `parts` (the folder of part files while a run goes)."""

    path: Path
    format: str

    @classmethod
    def at(cls, path: str | os.PathLike[str]) -> BatchOutput:
        out = Path(path).expanduser().absolute()
        fmt = FORMATS.get(out.suffix.lower())
        if fmt is None:
            raise BatchOutputError(f"--out {path}: give a .csv or .parquet file name")
        if out.is_dir():
            raise BatchOutputError(f"--out {path} is a folder; give a .csv or .parquet file name")
        if not out.parent.is_dir():
            raise BatchOutputError(f"--out {path}: the folder {out.parent} does not exist")
        return cls(out, fmt)

    @property
    def parts(self) -> Path:
        return self.path.with_name(self.path.name + ".parts")

    def part_files(self) -> list[Path]:
        if not self.parts.is_dir():
            return []
        return sorted(p for p in self.parts.glob(f"part-*{self.path.suffix}") if p.is_file())

    def read_done(self, model: str) -> dict[str, Row]:
        """Every row already written (`<out>` first, then the parts in order), one per file, the newest kept;
        BatchOutputError when a row was written by another model."""
        rows: dict[str, Row] = {}
        for source in ([self.path] if self.path.is_file() else []) + self.part_files():
            for row in read_rows(source, self.format):
                if row["model"] != model:
                    raise BatchOutputError(
                        f"{source} holds predictions of {row['model']!r}, not of {model!r}: give another --out, or "
                        f"delete {self.path.name} (and {self.parts.name}/) to start again")
                rows[row["file"]] = row
        return rows

    def next_part_number(self) -> int:
        numbers = [int(p.stem.split("-")[1]) for p in self.part_files()]
        return max(numbers, default=0) + 1

    def clear_temporaries(self) -> None:
        """Half-written files of a killed run: never renamed, so never read; removed before a new run writes."""
        for folder in (self.path.parent, self.parts):
            if folder.is_dir():
                for leftover in folder.glob(f".{self.path.name}*{TEMP_SUFFIX}"):
                    leftover.unlink(missing_ok=True)
                for leftover in folder.glob(f".part-*{TEMP_SUFFIX}"):
                    leftover.unlink(missing_ok=True)

    def write_part(self, number: int, rows: list[Row]) -> Path:
        self.parts.mkdir(exist_ok=True)
        return write_rows(self.parts / f"part-{number:06d}{self.path.suffix}", rows, self.format)

    def merge(self, model: str) -> list[Row]:
        """`<out>` and every part into `<out>`, one row per file sorted by file; the parts folder goes after."""
        rows = sorted(self.read_done(model).values(), key=lambda row: row["file"])
        write_rows(self.path, rows, self.format)
        for part in self.part_files():
            part.unlink()
        if self.parts.is_dir():
            self.clear_temporaries()
            self.parts.rmdir()
        return rows


def write_rows(path: Path, rows: Iterable[Row], fmt: str) -> Path:
    """Write through a temporary file beside `path` and rename it: a reader sees the old file or the whole new
    one, never half of it."""
    temporary = path.with_name(f".{path.name}{TEMP_SUFFIX}")
    rows = list(rows)
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist([{c: row.get(c) for c in COLUMNS} for row in rows], schema=SCHEMA),
                       temporary)
    else:
        with open(temporary, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(COLUMNS)
            writer.writerows([_csv_cell(row.get(c)) for c in COLUMNS] for row in rows)
    os.replace(temporary, path)
    return path


def read_rows(path: Path, fmt: str) -> list[Row]:
    if fmt == "parquet":
        table = pq.read_table(path)
        _check_columns(path, table.column_names)
        return [{c: row[c] for c in COLUMNS} for row in table.to_pylist()]
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        _check_columns(path, reader.fieldnames or [])
        return [_typed(row) for row in reader]


def _check_columns(path: Path, found: Sequence[str]) -> None:
    missing = [c for c in COLUMNS if c not in found]
    if missing:
        raise BatchOutputError(f"{path} is not a results table of `leukotune predict --out` (no column "
                               f"{', '.join(missing)}): give another --out")


def _csv_cell(value: Any) -> Any:
    # repr of a float is exact: a resumed file reads back the very value written
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _typed(row: dict[str, str]) -> Row:
    return {"file": row["file"], "class": row["class"] or None,
            "p_all": float(row["p_all"]) if row["p_all"] else None, "error": row["error"] or None,
            "model": row["model"]}
