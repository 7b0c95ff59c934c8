"""Decoding one image: odd but readable files are converted, broken or hostile ones raise ImageError with a reason."""
from __future__ import annotations

import pickle
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image, ImageFile

from leukotune.data import ImageError, probe_image, read_image
from leukotune.data.images import MAX_PIXELS


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares `width` x `height` 1-bit pixels in a few dozen bytes: a decompression bomb's header."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))
    return path


def _cell(size: int = 60) -> np.ndarray:
    """An RGB test pattern with a bright quadrant, so orientation and colour survive checks."""
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[: size // 2, : size // 2] = (200, 100, 220)
    return pixels


def _truncated_bmp(path: Path) -> Path:
    Image.fromarray(_cell()).save(path.with_suffix(".full.bmp"))
    raw = path.with_suffix(".full.bmp").read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


BAD_FILES: list[tuple[str, Callable[[Path], object], str]] = [
    ("zero.bmp", lambda p: p.write_bytes(b""), "empty file"),
    ("truncated.bmp", _truncated_bmp, "truncated"),
    ("text.bmp", lambda p: p.write_text("this is not an image\n"), "cannot decode"),
    ("bomb.png", lambda p: _png_header(p, 20_000, 20_000), "decompression bomb"),
    # Between Pillow's warning and error thresholds: the warning must be an error too.
    ("big.png", lambda p: _png_header(p, 8_000, 8_000), "decompression bomb"),
    ("garbage.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), "cannot decode"),
]


@pytest.mark.parametrize(("name", "make", "reason"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_files_raise_image_error(tmp_path: Path, name: str, make, reason: str) -> None:
    path = tmp_path / name
    make(path)
    with pytest.raises(ImageError, match=reason) as info:
        read_image(path, 32, "rgb")
    assert info.value.path == str(path) and reason in info.value.reason
    with pytest.raises(ImageError):
        probe_image(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        read_image(tmp_path / "nope.bmp", 32, "rgb")


def test_pillow_protections_stay_on() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS


def test_image_error_pickles() -> None:
    error = pickle.loads(pickle.dumps(ImageError("/x/a.bmp", "empty file (0 bytes)")))
    assert (error.path, error.reason) == ("/x/a.bmp", "empty file (0 bytes)")
    assert str(error) == "/x/a.bmp: empty file (0 bytes)"


def _rgba(pixels: np.ndarray) -> Image.Image:
    alpha = np.full(pixels.shape[:2], 255, np.uint8)
    alpha[pixels.shape[0] // 2:] = 0  # bottom half transparent (and white underneath)
    rgb = pixels.copy()
    rgb[pixels.shape[0] // 2:] = 255
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


CONVERTED: list[tuple[str, Callable[[], Image.Image]]] = [
    ("rgb.bmp", lambda: Image.fromarray(_cell())),
    ("gray.png", lambda: Image.fromarray(_cell()).convert("L")),
    ("rgba.png", lambda: _rgba(_cell())),
    ("palette.png", lambda: Image.fromarray(_cell()).convert("P")),
    ("sixteen.png", lambda: Image.fromarray(_cell()[..., 0].astype(np.uint16) * 257)),
    ("int32.tif", lambda: Image.fromarray(_cell()[..., 0].astype(np.int32) * 257)),
    ("onebit.png", lambda: Image.fromarray(_cell()).convert("1")),
    ("other_size.png", lambda: Image.fromarray(_cell(450)[:300, :200])),
    ("photo.jpg", lambda: Image.fromarray(_cell())),
    ("cmyk.tiff", lambda: Image.fromarray(_cell()).convert("CMYK")),
]


@pytest.mark.parametrize(("name", "build"), CONVERTED, ids=[c[0] for c in CONVERTED])
@pytest.mark.parametrize(("color", "channels"), [("rgb", 3), ("gray", 1)])
def test_readable_oddities_are_converted(tmp_path: Path, name: str, build, color: str, channels: int) -> None:
    path = tmp_path / name
    build().save(path)
    array = read_image(path, 32, color)
    assert array.shape == (channels, 32, 32) and array.dtype == np.uint8
    assert array.flags.c_contiguous
    # The bright top-left quadrant stays brighter than the black bottom-right one in every mode.
    assert array[:, 2:8, 2:8].mean() > array[:, -8:-2, -8:-2].mean() + 40


def test_rgba_transparency_becomes_black(tmp_path: Path) -> None:
    _rgba(_cell(64)).save(tmp_path / "a.png")
    array = read_image(tmp_path / "a.png", 64, "rgb")
    assert array[:, 40:, :].max() == 0


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(tmp_path / "white.png")
    assert Image.open(tmp_path / "white.png").mode.startswith("I")
    assert read_image(tmp_path / "white.png", 16, "gray").min() == 255


def test_non_square_is_padded_not_stretched(tmp_path: Path) -> None:
    pixels = np.full((20, 40, 3), 255, np.uint8)  # a wide white bar
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    array = read_image(tmp_path / "wide.png", 40, "gray")[0]
    assert array[:8].max() == 0 and array[-8:].max() == 0 and array[15:25].min() == 255


def test_resize_is_antialiased(tmp_path: Path) -> None:
    stripes = np.zeros((400, 400, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes alias to solid black or white without a low-pass filter
    Image.fromarray(stripes).save(tmp_path / "stripes.png")
    array = read_image(tmp_path / "stripes.png", 50, "gray")
    assert 100 < array.mean() < 155 and array.std() < 20


def test_real_cell(cnmc_sample: Path) -> None:
    path = next((cnmc_sample / "training_data" / "fold_0" / "all").glob("*.bmp"))
    assert probe_image(path) == ((450, 450), "RGB")
    rgb = read_image(path, 64, "rgb")
    assert rgb.shape == (3, 64, 64)
    assert rgb[:, 0, 0].max() == 0  # segmented on black
    assert rgb[2].mean() > rgb[1].mean()  # purple stain: more blue than green


def test_unknown_color_lists_valid(tmp_path: Path) -> None:
    Image.fromarray(_cell()).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="rgb, gray"):
        read_image(tmp_path / "a.png", 32, "hsv")
