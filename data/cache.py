"""Decode every cell once: a uint8 (N, C, H, W) ``.npy`` on disk, memory-mapped by each reader.

The cache key hashes the manifest (paths, labels, subjects, folds, file sizes and mtimes), the size, the colour
mode and the format version, so any change to the data or preprocessing builds a new cache instead of reusing a
stale one. Files are written under a temporary name and renamed into place, and builders take a file lock, so a
killed build never leaves a half-written cache and two workers on one node do not build the same one twice.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from . import images as _images
from .cnmc import CellRecord, SkippedFile
from .errors import DatasetError, ImageError
from .preprocess import channels_for

__all__ = ["CACHE_VERSION", "CachedImages", "cache_key", "default_cache_dir", "load_cached_images"]

# Bump when the decoding or the file format changes, so caches built by older code are not reused.
CACHE_VERSION = 1


@dataclass
class CachedImages:
    """Decoded images of the records that could be read; `kept[i]` is the record index of `images[i]`."""

    images: np.ndarray  # uint8 (N, C, H, W), usually a read-only memory map
    labels: np.ndarray  # int64 (N,)
    kept: np.ndarray  # int64 (N,) indices into the records passed in
    skipped: list[SkippedFile]
    key: str


def default_cache_dir() -> Path:
    """``$LEUKOTUNE_CACHE_DIR``, else ``~/.cache/leukotune``."""
    return Path(os.environ.get("LEUKOTUNE_CACHE_DIR") or Path.home() / ".cache" / "leukotune")


def cache_key(records: Sequence[CellRecord], size: int, color: str) -> str:
    """sha256 over everything the decoded pixels depend on; a file's size and mtime stand in for its bytes."""
    entries = []
    for r in records:
        try:
            stat = os.stat(r.path)
            signature = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            signature = [-1, -1]  # missing now: decoding will skip it, and its reappearance changes the key
        entries.append([r.path, r.label, r.subject, r.fold, *signature])
    blob = json.dumps({"version": CACHE_VERSION, "size": size, "color": color, "records": entries})
    return hashlib.sha256(blob.encode()).hexdigest()


def load_cached_images(records: Sequence[CellRecord], size: int, color: str,
                       cache_dir: str | os.PathLike[str] | None = None) -> CachedImages:
    """Images of `records` decoded at `size` x `size` in `color`, from the cache when it is current."""
    channels = channels_for(color)
    key = cache_key(records, size, color)
    directory = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / "decoded"
    stem = directory / key[:32]
    cached = _read_cache(stem, records, (channels, size, size), key)
    if cached is not None:
        return cached
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(f"{stem}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
            cached = _read_cache(stem, records, (channels, size, size), key)  # another worker may have built it
            if cached is None:
                _remove_stale_temps(stem)
                _build_cache(stem, records, size, color, key)
                cached = _read_cache(stem, records, (channels, size, size), key)
    except OSError as exc:  # read-only or full disk: say where, and how to point the cache elsewhere
        raise DatasetError(f"{directory}: cannot write the decoded-image cache ({exc}); "
                           "set LEUKOTUNE_CACHE_DIR or data.cache_dir to a writable folder") from exc
    if cached is None:
        raise RuntimeError(f"{stem}.npy: cache was just written but does not read back")
    return cached


def _read_cache(stem: Path, records: Sequence[CellRecord], shape: tuple[int, int, int],
                key: str) -> CachedImages | None:
    """The cache at `stem` if it is complete and matches `key`, else None (it will be rebuilt)."""
    try:
        meta = json.loads(Path(f"{stem}.json").read_text())
        if meta.get("key") != key or meta.get("version") != CACHE_VERSION:
            return None
        kept = np.asarray(meta["kept"], dtype=np.int64)
        # A zero-length array cannot be memory-mapped.
        images = np.load(f"{stem}.npy", mmap_mode="r" if len(kept) else None, allow_pickle=False)
        skipped = [SkippedFile(path, reason) for path, reason in meta["skipped"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, truncated or foreign: rebuild
    if images.dtype != np.uint8 or images.shape != (len(kept), *shape):
        return None
    labels = np.asarray([records[i].label for i in kept], dtype=np.int64)
    return CachedImages(images=images, labels=labels, kept=kept, skipped=skipped, key=key)


def _build_cache(stem: Path, records: Sequence[CellRecord], size: int, color: str, key: str) -> None:
    """Decode every record into ``<stem>.npy`` and write ``<stem>.json`` last: the JSON marks a complete cache."""
    shape = (channels_for(color), size, size)
    kept: list[int] = []
    skipped: list[SkippedFile] = []
    scratch, final = _temp_name(stem, ".npy"), _temp_name(stem, ".npy")
    try:
        if records:
            array = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.uint8, shape=(len(records), *shape))
            for index, record in enumerate(records):
                try:
                    # Looked up on the module at call time, so tests can count decodes.
                    array[len(kept)] = _images.read_image(record.path, size, color)
                except ImageError as exc:
                    skipped.append(SkippedFile(record.path, exc.reason))
                    continue
                kept.append(index)
            array.flush()
            del array
        _write_rows(scratch, final, len(kept), len(records), shape)
        os.replace(final, f"{stem}.npy")
        meta = {"version": CACHE_VERSION, "key": key, "size": size, "color": color, "kept": kept,
                "skipped": [[s.path, s.reason] for s in skipped]}
        _write_atomically(Path(f"{stem}.json"), json.dumps(meta))
    finally:
        Path(scratch).unlink(missing_ok=True)
        Path(final).unlink(missing_ok=True)


def _write_rows(scratch: str, final: str, rows: int, total: int, shape: tuple[int, int, int]) -> None:
    """The first `rows` decoded images as a standalone .npy (a copy only when some records were skipped)."""
    if rows == total and total > 0:
        os.replace(scratch, final)
    elif rows == 0:
        with open(final, "wb") as fh:  # a file object: np.save would append ".npy" to a bare name
            np.save(fh, np.zeros((0, *shape), np.uint8))
    else:
        source = np.load(scratch, mmap_mode="r")
        target = np.lib.format.open_memmap(final, mode="w+", dtype=np.uint8, shape=(rows, *shape))
        target[:] = source[:rows]
        target.flush()


def _write_atomically(path: Path, text: str) -> None:
    scratch = _temp_name(path.with_suffix(""), path.suffix)
    try:
        with open(scratch, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(scratch, path)
    finally:
        Path(scratch).unlink(missing_ok=True)


def _temp_name(stem: Path, suffix: str) -> str:
    # Unique per writer and never matching "<stem>.npy"/".json", so readers can never pick a partial file up.
    return f"{stem}{suffix}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _remove_stale_temps(stem: Path) -> None:
    """Delete temp files of builds that died; safe because the caller holds this key's lock."""
    for leftover in stem.parent.glob(f"{stem.name}.*.tmp-*"):
        leftover.unlink(missing_ok=True)
