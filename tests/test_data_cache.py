"""The decoded cache: built once, reused, rebuilt on any change, never read half-written, safe for two builders."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import leukotune.data.images
from leukotune.data import DatasetError, load_cached_images, load_manifest
from leukotune.data.cache import cache_key, default_cache_dir

CELLS = ["all/UID_1_1_1_all.bmp", "all/UID_2_1_1_all.bmp", "all/UID_3_1_1_all.bmp",
         "hem/UID_H1_1_1_hem.bmp", "hem/UID_H2_1_1_hem.bmp"]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Five small distinct cells in the {all,hem} layout (decoding 450-px files would only slow this down)."""
    root = tmp_path / "cells"
    for n, name in enumerate(CELLS):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (20 * n, 100, 200 - 20 * n)).save(root / name)
    return root


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths passed to read_image, in order (the cache looks it up on the module at call time)."""
    calls: list[str] = []
    real = leukotune.data.images.read_image

    def counting(path, size, color):
        calls.append(str(path))
        return real(path, size, color)

    monkeypatch.setattr(leukotune.data.images, "read_image", counting)
    return calls


def _load(root: Path, cache: Path, size: int = 16, color: str = "rgb"):
    return load_cached_images(load_manifest(root).records, size, color, cache)


def test_decoded_once(dataset: Path, tmp_path: Path, decodes: list[str]) -> None:
    first = _load(dataset, tmp_path / "cache")
    assert len(decodes) == 5
    second = _load(dataset, tmp_path / "cache")
    assert len(decodes) == 5  # nothing opened the second time
    assert isinstance(second.images, np.memmap) and not second.images.flags.writeable
    assert np.array_equal(first.images, second.images)
    assert second.images.shape == (5, 3, 16, 16) and second.images.dtype == np.uint8
    assert second.labels.tolist() == [1, 1, 1, 0, 0] and second.labels.dtype == np.int64
    assert second.kept.tolist() == [0, 1, 2, 3, 4] and second.key == first.key


def test_rebuilt_when_a_file_changes(dataset: Path, tmp_path: Path, decodes: list[str]) -> None:
    before = _load(dataset, tmp_path / "cache")
    changed = dataset / CELLS[0]
    Image.new("RGB", (40, 40), (255, 255, 255)).save(changed)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # coarse clocks: make it differ
    after = _load(dataset, tmp_path / "cache")
    assert len(decodes) == 10 and after.key != before.key
    assert after.images[0].min() == 255 and not np.array_equal(after.images[0], before.images[0])


@pytest.mark.parametrize(("size", "color", "shape"), [(24, "rgb", (3, 24, 24)), (16, "gray", (1, 16, 16))])
def test_rebuilt_for_another_size_or_colour(dataset: Path, tmp_path: Path, decodes: list[str], size: int,
                                            color: str, shape: tuple[int, int, int]) -> None:
    _load(dataset, tmp_path / "cache")
    other = _load(dataset, tmp_path / "cache", size, color)
    assert len(decodes) == 10 and other.images.shape == (5, *shape)


def test_unreadable_images_are_skipped(dataset: Path, tmp_path: Path) -> None:
    (dataset / CELLS[1]).write_bytes(b"")
    (dataset / CELLS[3]).write_text("not a bitmap")
    cached = _load(dataset, tmp_path / "cache")
    assert cached.kept.tolist() == [0, 2, 4] and cached.labels.tolist() == [1, 1, 0]
    assert [(Path(s.path).name, s.reason[:12]) for s in cached.skipped] == [
        ("UID_2_1_1_all.bmp", "empty file ("), ("UID_H1_1_1_hem.bmp", "cannot decod")]
    again = _load(dataset, tmp_path / "cache")  # skips are remembered with the cache
    assert again.skipped == cached.skipped and np.array_equal(again.images, cached.images)


def test_all_unreadable_gives_an_empty_cache(dataset: Path, tmp_path: Path) -> None:
    for name in CELLS:
        (dataset / name).write_bytes(b"")
    cached = _load(dataset, tmp_path / "cache")
    assert cached.images.shape == (0, 3, 16, 16) and len(cached.skipped) == 5
    assert _load(dataset, tmp_path / "cache").images.shape == (0, 3, 16, 16)


def test_stale_partial_files_are_never_used(dataset: Path, tmp_path: Path, decodes: list[str]) -> None:
    records = load_manifest(dataset).records
    cache = tmp_path / "cache"
    stem = cache / "decoded" / cache_key(records, 16, "rgb")[:32]
    stem.parent.mkdir(parents=True)
    # What a killed builder may leave: a temp file, and a final-named .npy without its JSON marker.
    Path(f"{stem}.npy.tmp-999-dead").write_bytes(b"\x93NUMPY garbage")
    np.save(f"{stem}.npy", np.full((5, 3, 16, 16), 7, np.uint8))
    cached = load_cached_images(records, 16, "rgb", cache)
    assert len(decodes) == 5 and (cached.images != 7).any()
    assert not list(stem.parent.glob("*.tmp-*"))


def test_killed_build_leaves_nothing_reusable(dataset: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real = leukotune.data.images.read_image
    calls = []

    def dying(path, size, color):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the worker is killed mid-build
        return real(path, size, color)

    monkeypatch.setattr(leukotune.data.images, "read_image", dying)
    with pytest.raises(KeyboardInterrupt):
        _load(dataset, tmp_path / "cache")
    assert sorted(p.suffix for p in (tmp_path / "cache" / "decoded").iterdir()) == [".lock"]
    monkeypatch.setattr(leukotune.data.images, "read_image", real)
    assert _load(dataset, tmp_path / "cache").images.shape == (5, 3, 16, 16)


def test_concurrent_builders_decode_once(dataset: Path, tmp_path: Path, decodes: list[str]) -> None:
    results = [None, None]

    def build(slot: int) -> None:
        results[slot] = _load(dataset, tmp_path / "cache")

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(decodes) == 5  # the second builder waited on the lock and read the first one's cache
    assert np.array_equal(results[0].images, results[1].images)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LEUKOTUNE_CACHE_DIR", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("LEUKOTUNE_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "leukotune"


def test_unwritable_cache_dir_is_a_dataset_error(dataset: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(DatasetError, match="LEUKOTUNE_CACHE_DIR"):
        _load(dataset, blocker)
