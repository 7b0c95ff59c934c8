"""A torch Dataset over the decoded uint8 cache: batched fetches, normalised and rot90/flip-augmented by
`preprocess`.

A cell has no canonical orientation, so the eight rotations/flips of an image are equally valid cells: the paper
enlarged its training set 4x/8x with them ("materialize"); on the fly, each epoch sees one random variant instead.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from .preprocess import AUGMENTATIONS, Normalization, apply_variants, augmentation_factor, check_augment

__all__ = ["BatchItems", "CellDataset", "channel_stats", "collate_batch"]

# Enough pixels for mean/std to three decimals; reading every image of a large cache would cost seconds.
STATS_MAX_IMAGES = 2048
STATS_CHUNK_VALUES = 4_000_000  # float64 values per chunk (32 MB), whatever the image size
# A channel that is (nearly) constant would blow up on division; one grey level is the smallest meaningful spread.
MIN_STD = 1.0 / 255.0


def channel_stats(images: np.ndarray, indices: Sequence[int] | np.ndarray,
                  max_images: int = STATS_MAX_IMAGES) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units over `indices` (pass the TRAIN indices: validation pixels must not
    leak into normalisation). Above `max_images` an evenly spaced subset is used."""
    chosen = np.sort(np.asarray(indices, dtype=np.int64))
    if len(chosen) == 0:
        raise ValueError("channel_stats needs at least one image index")
    if len(chosen) > max_images:
        chosen = chosen[np.linspace(0, len(chosen) - 1, max_images).round().astype(np.int64)]
    channels = images.shape[1]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    step = max(1, STATS_CHUNK_VALUES // int(np.prod(images.shape[1:])))
    for start in range(0, len(chosen), step):
        chunk = np.asarray(images[chosen[start:start + step]], dtype=np.float64)
        total += chunk.sum(axis=(0, 2, 3))
        squares += np.square(chunk).sum(axis=(0, 2, 3))
    count = len(chosen) * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return tuple(float(m) for m in mean / 255.0), tuple(float(max(s / 255.0, MIN_STD)) for s in std)


class BatchItems(list):
    """(x, y) pairs for torch's default collate, plus the already stacked `batch` for `collate_batch`."""

    def __init__(self, items: object, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        super().__init__(items)  # type: ignore[call-overload]
        self.batch = batch


def collate_batch(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    """DataLoader collate_fn: a CellDataset batch as fetched, without stacking it again; others as torch would."""
    batch = getattr(items, "batch", None)
    return batch if batch is not None else default_collate(items)


class CellDataset(Dataset):
    """Normalised float32 (C, H, W) tensors and int64 labels for `indices` of a uint8 (N, C, H, W) image array.

    `augment` defaults to "none", which is what validation must use. With "rot90"/"rot90_flip", each fetch draws
    a random variant per sample; with `materialize=True` the dataset instead lists every variant of every image
    (4x/8x the length, the paper's fixed enlargement) and nothing is random.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: Sequence[int] | np.ndarray,
                 mean: Sequence[float], std: Sequence[float], augment: str = "none", materialize: bool = False,
                 seed: int = 0) -> None:
        check_augment(augment)
        self.normalization = Normalization(mean, std, channels=images.shape[1])
        if augment != "none" and images.shape[2] != images.shape[3]:
            raise ValueError(f"rotation needs square images, got {images.shape[2]}x{images.shape[3]}")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.augment = augment
        self.materialize = materialize
        self.seed = seed
        self.factor = augmentation_factor(augment, materialize)
        self._rng: np.random.Generator | None = None
        self._rng_worker: int | None = None

    def __len__(self) -> int:
        return len(self.indices) * self.factor

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, idxs: Sequence[int]) -> BatchItems:
        """A whole batch with one fancy index and one vectorised normalisation (DataLoader calls this).

        Returns (x, y) pairs that are views into one batch tensor, so torch's default collate works unchanged;
        `collate_batch` skips even that copy.
        """
        positions = np.asarray(idxs, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"index out of range for CellDataset of length {len(self)}")
        base = len(self.indices)
        variants = positions // base  # 0 unless materialized
        source = self.indices[positions % base]
        batch = np.asarray(self.images[source], dtype=np.uint8)  # a copy, so augmenting in place is safe
        if self.augment != "none":
            if not self.materialize:
                variants = self._draw_variants(len(positions))
            batch = apply_variants(batch, variants)
        pixels = self.normalization.numpy(batch)
        x, y = torch.from_numpy(pixels), torch.from_numpy(self.labels[source])
        return BatchItems(zip(x, y), batch=(x, y))

    def _draw_variants(self, count: int) -> np.ndarray:
        """Random variant per sample: 0-3 = rotation k; 4-7 = flip then rotation (rot90_flip only)."""
        return self._generator().integers(0, AUGMENTATIONS[self.augment], size=count)

    def _generator(self) -> np.random.Generator:
        # DataLoader workers each get a copy of this object; seeding from the worker's own seed (which torch
        # varies per worker and per epoch) stops them from drawing the same "random" rotations.
        worker = get_worker_info()
        worker_id = None if worker is None else worker.id
        if self._rng is None or self._rng_worker != worker_id:
            entropy = [self.seed] if worker is None else [self.seed, worker.seed % 2**63]
            self._rng = np.random.default_rng(entropy)
            self._rng_worker = worker_id
        return self._rng
