"""CellDataset: normalisation with the given stats, augmentation only where asked, batched DataLoader fetches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from leukotune.data import CellDataset, augmentation_factor, channel_stats

MEAN, STD = (0.2, 0.3, 0.4), (0.1, 0.2, 0.25)


@pytest.fixture
def images() -> np.ndarray:
    """Ten 3x8x8 images with no rotational symmetry (a gradient plus a marked corner)."""
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 200, size=(10, 3, 8, 8), dtype=np.uint8)
    stack[:, :, 0, 0] = 255
    return stack


LABELS = np.array([0, 1] * 5, dtype=np.int64)


def _normalised(image: np.ndarray) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(-1, 1, 1)
    std = torch.tensor(STD).view(-1, 1, 1)
    return (torch.from_numpy(image).float() / 255.0 - mean) / std


def _variants(image: np.ndarray) -> list[np.ndarray]:
    flipped = image[..., ::-1]
    return [np.rot90(base, k, axes=(1, 2)) for base in (image, flipped) for k in range(4)]


def _matches(x: torch.Tensor, candidates: list[np.ndarray]) -> list[int]:
    return [i for i, c in enumerate(candidates) if torch.allclose(x, _normalised(np.ascontiguousarray(c)), atol=1e-5)]


def test_normalisation_uses_given_stats(images: np.ndarray) -> None:
    dataset = CellDataset(images, LABELS, [3, 7], MEAN, STD)
    x, y = dataset[1]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.allclose(x, _normalised(images[7]), atol=1e-5) and int(y) == 1


def test_validation_default_is_never_augmented(images: np.ndarray) -> None:
    dataset = CellDataset(images, LABELS, np.arange(10), MEAN, STD)  # how validation is built: defaults
    assert dataset.augment == "none" and len(dataset) == 10
    for _ in range(5):
        for i in range(10):
            assert _matches(dataset[i][0], _variants(images[i])) == [0]


@pytest.mark.parametrize(("augment", "kinds"), [("rot90", 4), ("rot90_flip", 8)])
def test_on_the_fly_augmentation_is_random_and_valid(images: np.ndarray, augment: str, kinds: int) -> None:
    dataset = CellDataset(images, LABELS, [2], MEAN, STD, augment=augment, seed=1)
    assert len(dataset) == 1
    seen = set()
    for _ in range(60):
        found = _matches(dataset[0][0], _variants(images[2]))
        assert len(found) == 1 and found[0] < kinds
        seen.add(found[0])
    assert len(seen) == kinds


@pytest.mark.parametrize(("augment", "factor"), [("rot90", 4), ("rot90_flip", 8)])
def test_materialize_lists_every_variant(images: np.ndarray, augment: str, factor: int) -> None:
    dataset = CellDataset(images, LABELS, [4, 5, 6], MEAN, STD, augment=augment, materialize=True)
    assert len(dataset) == 3 * factor
    for position, image in enumerate(images[[4, 5, 6]]):
        found = [_matches(dataset[position + 3 * v][0], _variants(image)) for v in range(factor)]
        assert found == [[v] for v in range(factor)]
    again = CellDataset(images, LABELS, [4, 5, 6], MEAN, STD, augment=augment, materialize=True)
    assert torch.equal(dataset[7][0], again[7][0])  # nothing random


@pytest.mark.parametrize(("augment", "materialize", "factor"), [
    ("none", False, 1), ("none", True, 1), ("rot90", False, 1), ("rot90", True, 4),
    ("rot90_flip", False, 1), ("rot90_flip", True, 8),
])
def test_augmentation_factor(augment: str, materialize: bool, factor: int) -> None:
    assert augmentation_factor(augment, materialize) == factor


def test_dataloader_batches(images: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = CellDataset(images, LABELS, np.arange(10), MEAN, STD, augment="rot90")
    # The batched path must be the one used: per-item fetches would defeat it.
    monkeypatch.setattr(CellDataset, "__getitem__", lambda self, i: pytest.fail("per-item fetch"))
    batches = list(DataLoader(dataset, batch_size=4, shuffle=True))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 8, 8), (4, 3, 8, 8), (2, 3, 8, 8)]
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in batches)
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(LABELS.tolist())


def test_gray_batches(images: np.ndarray) -> None:
    gray = images[:, :1]
    dataset = CellDataset(gray, LABELS, [0, 1, 2], (0.5,), (0.25,))
    x, y = next(iter(DataLoader(dataset, batch_size=3)))
    assert x.shape == (3, 1, 8, 8) and y.tolist() == [0, 1, 0]


def test_channel_stats_use_only_the_given_indices(images: np.ndarray) -> None:
    train = np.array([0, 2, 4, 6])
    poisoned = images.copy()
    poisoned[[1, 3, 5]] = 255  # validation pixels must not move the stats
    mean, std = channel_stats(poisoned, train)
    pixels = images[train].astype(np.float64) / 255.0
    assert np.allclose(mean, pixels.mean(axis=(0, 2, 3))) and np.allclose(std, pixels.std(axis=(0, 2, 3)))
    assert all(isinstance(v, float) for v in mean + std)


def test_channel_stats_samples_large_sets(images: np.ndarray) -> None:
    mean, _ = channel_stats(images, np.arange(10), max_images=5)
    assert np.allclose(mean, images[[0, 2, 4, 7, 9]].mean(axis=(0, 2, 3)) / 255.0)


def test_rejects_bad_arguments(images: np.ndarray) -> None:
    with pytest.raises(ValueError, match="valid: none, rot90, rot90_flip"):
        CellDataset(images, LABELS, [0], MEAN, STD, augment="mixup")
    with pytest.raises(ValueError, match="3 values"):
        CellDataset(images, LABELS, [0], (0.5,), (0.5,))
    with pytest.raises(IndexError):
        CellDataset(images, LABELS, [0], MEAN, STD)[1]


def test_collate_batch_skips_the_restack(images: np.ndarray) -> None:
    from leukotune.data import collate_batch

    dataset = CellDataset(images, LABELS, np.arange(10), MEAN, STD)
    fast = list(DataLoader(dataset, batch_size=4, collate_fn=collate_batch))
    plain = list(DataLoader(dataset, batch_size=4))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(fast, plain))
    assert collate_batch([(torch.zeros(2), torch.tensor(1))])[0].shape == (1, 2)  # plain items still collate
