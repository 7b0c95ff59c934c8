"""data/preprocess.py, the one preprocessing: each transform's host (numpy) and device (torch) forms agree bit for
bit, so training on either pipeline and serving feed a model the same input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from leukotune.data.preprocess import ROTATIONS, Normalization, apply_variants, variant

MEAN, STD = (0.55, 0.45, 0.6), (0.21, 0.19, 0.23)


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(16, 3, 12, 12), dtype=np.uint8)


def test_normalization_numpy_and_torch_agree_bit_for_bit(batch: np.ndarray) -> None:
    norm = Normalization(MEAN, STD)
    on_host, as_tensor = norm.numpy(batch), norm.tensor(torch.from_numpy(batch))
    assert on_host.dtype == np.float32 and as_tensor.dtype == torch.float32
    assert np.array_equal(on_host, as_tensor.numpy())
    textbook = (torch.from_numpy(batch).double() / 255 - torch.tensor(MEAN).double().view(-1, 1, 1)) \
        / torch.tensor(STD).double().view(-1, 1, 1)
    assert torch.allclose(as_tensor.double(), textbook, atol=1e-5)


def test_normalization_refuses_stats_for_other_channels() -> None:
    with pytest.raises(ValueError, match="need 3 values"):
        Normalization((0.5,), (0.2,), channels=3)


def test_variants_applied_to_a_batch_are_each_samples_variant_on_host_and_device(batch: np.ndarray) -> None:
    variants = np.arange(16) % 8
    on_host = apply_variants(batch.copy(), variants)
    as_tensor = apply_variants(torch.from_numpy(batch), torch.from_numpy(variants)).numpy()
    assert np.array_equal(on_host, as_tensor)
    for image, sample, v in zip(on_host, batch, variants):
        assert np.array_equal(image, variant(sample, int(v)))
        assert np.array_equal(image, variant(torch.from_numpy(sample), int(v)).numpy())
    assert len({variant(batch[0], v).tobytes() for v in range(8)}) == 8  # eight different cells


def test_the_first_variants_are_the_rotations_test_time_augmentation_averages(batch: np.ndarray) -> None:
    images = torch.from_numpy(batch)
    for k in range(ROTATIONS):
        assert torch.equal(variant(images, k), torch.rot90(images, k, dims=(-2, -1)))
