"""`leukotune predict`: classify cell image files with a trained model, read at its size and colour and fed through
the one inference path (`inference.probabilities`), one row per file; a file that cannot be read is reported and
the others go on. P(ALL) is calibrated with the model's temperature and a cell is called ALL at the model's
threshold (both 1.0 and 0.5 unless its registered version stores others). `leukotune evaluate` classifies a labelled
folder the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from leukotune.data.images import read_image
from leukotune.tuner.evaluation.inference import TrainedModel, probabilities

IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass(frozen=True)
class Prediction:
    """One row of output: a class and P(ALL), or the reason the file could not be classified."""

    file: str
    label: str | None = None
    p_all: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        return {"file": self.file, "class": self.label, "p_all": round(self.p_all, 6)}


def list_images(paths: Iterable[str | Path]) -> list[tuple[Path, str | None]]:
    """Files named directly (whatever their suffix) and image files found under folders, recursively, in order.

    A path that does not exist comes back with its error, to be reported like an unreadable file.
    """
    seen: set[Path] = set()
    found: list[tuple[Path, str | None]] = []

    def add(path: Path, error: str | None = None) -> None:
        if path not in seen:
            seen.add(path)
            found.append((path, error))

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
                add(child)
        elif path.is_file():
            add(path)
        else:
            add(path, "no such file or folder")
    return found


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def predict_files(model: TrainedModel, files: list[tuple[Path, str | None]], tta: bool = False,
                  batch_size: int = 32) -> list[Prediction]:
    """One Prediction per file in input order; a file that cannot be read gets its error, the others go on.

    Files are read one batch at a time, so a folder of any size needs only one batch in memory.
    """
    rows: list[Prediction] = []
    prep = model.preprocessing
    for chunk in _batches(files, max(1, batch_size)):
        results: dict[int, Prediction] = {}
        readable: list[tuple[int, np.ndarray]] = []
        for i, (path, error) in enumerate(chunk):
            if error:
                results[i] = Prediction(str(path), error=error)
                continue
            try:
                readable.append((i, read_image(path, int(prep["image_size"]), prep["color"])))
            except Exception as exc:  # noqa: BLE001 - per-file boundary: report it, classify the rest
                results[i] = Prediction(str(path), error=_one_line(exc))
        if readable:
            images = np.stack([image for _, image in readable])
            p_all = probabilities(model, images, tta=tta, batch_size=len(readable))
            for (i, _), p in zip(readable, p_all):
                results[i] = Prediction(str(chunk[i][0]), "all" if p >= model.threshold else "hem", float(p))
        rows += [results[i] for i in range(len(chunk))]
    return rows


def _one_line(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # data.ImageError: the row already names the file
    text = str(reason if isinstance(reason, str) else exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def format_table(rows: list[Prediction]) -> list[str]:
    width = max([len(r.file) for r in rows] + [4])
    lines = [f"{'file':<{width}}  {'class':<5}  p_all"]
    for row in rows:
        if row.error is not None:
            lines.append(f"{row.file:<{width}}  {'-':<5}  -      error: {row.error}")
        else:
            lines.append(f"{row.file:<{width}}  {row.label:<5}  {row.p_all:.4f}")
    return lines
