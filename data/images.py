"""Decode one cell image into a fixed-size uint8 (C, H, W) array, converting odd but readable files and rejecting
broken ones with an ImageError that says why.
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from typing import Iterator

import numpy as np
from PIL import Image, ImageFile

from .errors import ImageError

__all__ = ["COLOR_CHANNELS", "MAX_PIXELS", "channels_for", "probe_image", "read_image"]

COLOR_CHANNELS = {"rgb": 3, "gray": 1}
# A C-NMC cell is 450x450 = 0.2 MP; anything past 50 MP is a broken or hostile file, not a cell. Pillow
# warns above this and refuses above twice it; the warning is turned into an error below.
MAX_PIXELS = 50_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Partial files must fail loudly instead of being padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def channels_for(color: str) -> int:
    """Channels of a colour mode ("rgb" 3, "gray" 1); unknown names raise ValueError listing the valid ones."""
    try:
        return COLOR_CHANNELS[color]
    except KeyError:
        raise ValueError(f"unknown color {color!r}; valid: {', '.join(COLOR_CHANNELS)}") from None


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
    """The image at `path` as uint8 (C, size, size), C=3 for "rgb" and 1 for "gray".

    Grayscale, palette, alpha (composited on black, the segmentation background), 16/32-bit and non-square or
    other-sized files are converted; unreadable ones raise ImageError.
    """
    channels = channels_for(color)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    with _opened(path) as img:
        try:
            img = _pad_square(_flatten(_to_8bit(img), channels))
        except (ValueError, OSError) as exc:  # a mode Pillow decodes but cannot convert (e.g. LAB)
            raise ImageError(path, f"cannot convert {img.mode} image: {exc}") from exc
        # Pillow widens the bilinear kernel when shrinking, so this is antialiased (and matches torchvision's
        # Resize on PIL images); no reducing_gap, which would trade accuracy for speed.
        img = img.resize((size, size), Image.Resampling.BILINEAR)
        array = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(array.reshape(size, size, channels).transpose(2, 0, 1))


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images scaled into 0..255 grayscale ("L")."""
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img
    values = np.asarray(img).astype(np.float64)
    peak = float(values.max(initial=0.0))
    if img.mode.startswith("I;16"):
        scale = 255.0 / 65535.0
    elif img.mode == "F" and peak <= 1.0:
        scale = 255.0  # floats in 0..1
    elif peak <= 255.0:
        scale = 1.0  # 8-bit data stored in a wide mode
    else:
        scale = 255.0 / (65535.0 if peak <= 65535.0 else peak)
    return Image.fromarray(np.clip(values * scale + 0.5, 0, 255).astype(np.uint8), mode="L")


def _flatten(img: Image.Image, channels: int) -> Image.Image:
    """Any mode (palette, alpha, CMYK, 1-bit...) to RGB or L; transparent parts become black."""
    has_alpha = "A" in img.getbands() or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return img.convert("RGB" if channels == 3 else "L")


def _pad_square(img: Image.Image) -> Image.Image:
    """Pad with black to a centred square, so resizing keeps the cell's shape (C-NMC images are square already)."""
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    square = Image.new(img.mode, (side, side))
    square.paste(img, ((side - width) // 2, (side - height) // 2))
    return square
