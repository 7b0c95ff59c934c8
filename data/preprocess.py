"""What a model is fed, written once: a decoded image fitted to the model's size and colour, the normalisation,
and the rot90/flip variants.

Training (CellDataset, the device pipeline's DeviceSplit), the test side, `leukotune predict` and
`leukotune evaluate` all call these; a second copy is how training and serving drift apart.

torch is imported where a tensor is handled: reading and checking images (`leukotune data check`) loads none of it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, TypeVar

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

__all__ = ["AUGMENTATIONS", "COLOR_CHANNELS", "ROTATIONS", "Normalization", "apply_variants", "augmentation_factor",
           "channels_for", "check_augment", "fit_image", "input_channels", "variant", "variant_maps"]

Array = TypeVar("Array", np.ndarray, "torch.Tensor")

COLOR_CHANNELS = {"rgb": 3, "gray": 1}
# Variants per image: rotations by k * 90 degrees, optionally after a horizontal flip. A cell has no canonical
# orientation, so every variant is an equally valid cell.
AUGMENTATIONS = {"none": 1, "rot90": 4, "rot90_flip": 8}
# Test-time augmentation averages over the rotations alone: variants 0 to 3.
ROTATIONS = 4


# ---------------------------------------------------------------- size and colour

def channels_for(color: str) -> int:
    """Channels of a colour mode ("rgb" 3, "gray" 1); unknown names raise ValueError listing the valid ones."""
    try:
        return COLOR_CHANNELS[color]
    except KeyError:
        raise ValueError(f"unknown color {color!r}; valid: {', '.join(COLOR_CHANNELS)}") from None


def input_channels(size: int, color: str) -> int:
    """Channels of a model input of `size` px in `color`; ValueError for an unknown colour or a size below 1."""
    channels = channels_for(color)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    return channels


def fit_image(img: Image.Image, size: int, color: str) -> np.ndarray:
    """A decoded image as uint8 (C, size, size), C=3 for "rgb" and 1 for "gray".

    Grayscale, palette, alpha (composited on black, the segmentation background), 16/32-bit and non-square or
    other-sized images are converted; a mode Pillow cannot convert raises ValueError or OSError.
    """
    channels = input_channels(size, color)
    img = _pad_square(_flatten(_to_8bit(img), channels))
    # Pillow widens the bilinear kernel when shrinking, so this is antialiased (and matches torchvision's Resize on
    # PIL images); no reducing_gap, which would trade accuracy for speed.
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


# ---------------------------------------------------------------- normalisation

class Normalization:
    """uint8 pixels to `(x / 255 - mean) / std` per channel, as one multiply-add with float32 constants
    (`scale = 1 / (255 std)`, `shift = -mean / std`).

    numpy's in-place multiply-add is about 3x faster than torch's broadcast ops on one thread (CellDataset,
    inference on the host), and torch's runs where the pixels already are (DeviceSplit on a GPU). Both make the
    same two float32 roundings with the same constants, so every caller feeds the model the same bits.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int | None = None) -> None:
        if len(mean) != len(std) or (channels is not None and len(mean) != channels):
            need = channels if channels is not None else len(mean)
            raise ValueError(f"mean/std need {need} values (one per channel), got {len(mean)} and {len(std)}")
        std_a = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
        self.scale = 1.0 / (255.0 * std_a)
        self.shift = -np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1) / std_a
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def numpy(self, batch: np.ndarray) -> np.ndarray:
        """A new float32 array of uint8 (..., C, H, W) `batch`, normalised."""
        pixels = batch.astype(np.float32)
        pixels *= self.scale
        pixels += self.shift
        return pixels

    def tensor(self, images: torch.Tensor) -> torch.Tensor:
        """A new float32 tensor of uint8 (..., C, H, W) `images`, normalised on their device.

        Multiply, then add (not a fused addcmul): the same two roundings as `numpy`, so the values agree.
        """
        scale, shift = self._constants(images.device)
        return images.float().mul_(scale).add_(shift)

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        if device not in self._on_device:
            self._on_device[device] = (torch.from_numpy(self.scale).to(device), torch.from_numpy(self.shift).to(device))
        return self._on_device[device]


# ---------------------------------------------------------------- rot90/flip variants

def check_augment(augment: str) -> None:
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {augment!r}; valid: {', '.join(AUGMENTATIONS)}")


def augmentation_factor(augment: str, materialize: bool) -> int:
    """How many times each image appears per epoch: 4 or 8 when materialized, else 1."""
    check_augment(augment)
    return AUGMENTATIONS[augment] if materialize else 1


def variant(images: Array, v: int) -> Array:
    """Variant `v` (0-7) of a (..., H, W) image or batch, a numpy array or a tensor: flip W when v >= 4, then
    rotate by (v % 4) * 90 degrees. Variants 0-3 are the plain rotations."""
    if isinstance(images, np.ndarray):
        return np.rot90(images[..., ::-1] if v >= 4 else images, v % 4, axes=(-2, -1))
    return (images.flip(-1) if v >= 4 else images).rot90(v % 4, dims=(-2, -1))


def variant_maps(size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(8, size*size) source pixel of every output pixel for each `variant`: applying one is a single gather."""
    import torch

    grid = torch.arange(size * size, device=device).view(size, size)
    return torch.stack([variant(grid, v).reshape(-1) for v in range(8)])


def apply_variants(images: Array, variants: Array, maps: torch.Tensor | None = None) -> Array:
    """Variant `variants[i]` of each sample of a (B, C, H, H) batch.

    A tensor (the device pipeline): one batched gather through `variant_maps`, so no step asks the host which
    samples to touch (boolean indexing would synchronise with a GPU), at a sixth of the cost of rotating the whole
    batch three times and selecting with torch.where. A numpy array (the host loader): in place, one `variant` per
    variant drawn, three times faster than the gather on one core.
    """
    if isinstance(images, np.ndarray):
        for v in range(1, 8):
            chosen = variants == v
            if chosen.any():
                images[chosen] = variant(images[chosen], v)
        return images
    batch, channels, size, _ = images.shape
    maps = variant_maps(size, images.device) if maps is None else maps
    index = maps[variants].unsqueeze(1).expand(batch, channels, size * size)
    return images.reshape(batch, channels, size * size).gather(2, index).view(batch, channels, size, size)
