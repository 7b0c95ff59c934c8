"""Decode one cell image, rejecting broken ones with an ImageError that says why, and fit it to a model's input
(`preprocess.fit_image`: odd but readable files are converted).
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from typing import Iterator

import numpy as np
from PIL import Image, ImageFile

from .errors import ImageError
from .preprocess import fit_image, input_channels

__all__ = ["MAX_PIXELS", "probe_image", "read_image"]

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
    img = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
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
        raise ImageError(path, f"cannot decode: {type(exc).__name__}: {exc}") from exc
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
        try:
            return fit_image(img, size, color)
        except (ValueError, OSError) as exc:  # a mode Pillow decodes but cannot convert (e.g. LAB)
            raise ImageError(path, f"cannot convert {img.mode} image: {exc}") from exc
