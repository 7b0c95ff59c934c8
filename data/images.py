"""Decode one cell image, rejecting broken ones with an ImageError that says why, and fit it to a model's input
(`preprocess.fit_image`: odd but readable files are converted). A file on disk (`read_image`) and the same file's
bytes sent to a served model (`decode_image`) pass the same checks and come out the same.
"""
from __future__ import annotations

import io
import os
import warnings
from contextlib import contextmanager
from typing import Iterator

import numpy as np
from PIL import Image, ImageFile

from .errors import ImageError
from .preprocess import fit_image, input_channels

__all__ = ["MAX_PIXELS", "decode_image", "probe_image", "read_image"]

# A C-NMC cell is 450x450 = 0.2 MP; anything past 50 MP is a broken or hostile file, not a cell. Pillow
# warns above this and refuses above twice it; the warning is turned into an error below.
MAX_PIXELS = 50_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Partial files must fail loudly instead of being padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@contextmanager
def _opened(path: str | os.PathLike[str]) -> Iterator[Image.Image]:
    """The fully decoded image at `path`; any failure to decode becomes ImageError(path, reason)."""
    if not os.path.isfile(path):
        raise ImageError(path, "file does not exist")
    if os.path.getsize(path) == 0:
        raise ImageError(path, "empty file (0 bytes)")
    with _decoded(path, path) as img:
        yield img


@contextmanager
def _decoded(source: str | os.PathLike[str] | io.BytesIO, path: object) -> Iterator[Image.Image]:
    """The fully decoded image in `source` (a file or its bytes); any failure becomes ImageError(path, reason)."""
    img = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source)
            # Checked here too, so protection holds even if other code raised Pillow's global limit.
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(path, f"decompression bomb: {img.width}x{img.height} pixels "
                                       f"exceeds the {MAX_PIXELS:,}-pixel limit")
            img.load()  # decode now, so a truncated file fails here rather than later
    except BaseException as exc:
        if img is not None:
            img.close()
        if isinstance(exc, ImageError) or not isinstance(exc, Exception):
            raise  # ours, or KeyboardInterrupt/SystemExit
        if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            raise ImageError(path, f"decompression bomb: {exc}") from exc
        # Pillow's plugins raise many types for bad data (OSError, SyntaxError, struct.error, ...).
        detail = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, Image.UnidentifiedImageError) and isinstance(source, io.BytesIO):  # not the address
            detail = f"{type(exc).__name__}: not a format Pillow can read"
        raise ImageError(path, f"cannot decode: {detail}") from exc
    try:
        yield img
    finally:
        img.close()


def probe_image(path: str | os.PathLike[str]) -> tuple[tuple[int, int], str]:
    """(width, height) and Pillow mode of the image at `path`, after a full decode (catches truncation)."""
    with _opened(path) as img:
        return img.size, img.mode


def read_image(path: str | os.PathLike[str], size: int, color: str) -> np.ndarray:
    """The image at `path` as uint8 (C, size, size), fitted to the model's size and colour by
    `preprocess.fit_image`; unreadable or unconvertible files raise ImageError."""
    input_channels(size, color)  # a bad size or colour is the caller's ValueError, whatever the file
    with _opened(path) as img:
        return _fitted(img, size, color, path)


def decode_image(data: bytes, size: int, color: str, name: str = "image") -> np.ndarray:
    """An image file's bytes (BMP, PNG, ... as a client sends them) as uint8 (C, size, size), exactly as
    `read_image` reads the file; bytes that are empty, not an image or cut short raise ImageError naming `name`."""
    input_channels(size, color)
    if len(data) == 0:
        raise ImageError(name, "empty (0 bytes)")
    with _decoded(io.BytesIO(data), name) as img:
        return _fitted(img, size, color, name)


def _fitted(img: Image.Image, size: int, color: str, path: object) -> np.ndarray:
    try:
        return fit_image(img, size, color)
    except (ValueError, OSError) as exc:  # a mode Pillow decodes but cannot convert (e.g. LAB)
        raise ImageError(path, f"cannot convert {img.mode} image: {exc}") from exc
