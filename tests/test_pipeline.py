"""The device-resident input pipeline (train.pipeline=device) against the DataLoader path it replaces, on CPU."""
from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from leukotune.data import CellDataset, collate_batch
from leukotune.data.preprocess import apply_variants
from leukotune.models import get_model
from leukotune.tuner.config import load_study
from leukotune.tuner.train.loop import run_training, train_one_epoch, validate
from leukotune.tuner.train import pipeline
from leukotune.tuner.train.pipeline import DeviceSplit, resolve_pipeline
from leukotune.tuner.train.sessions import LocalSession

from conftest import SMOKE

CPU = torch.device("cpu")
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def cells() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 3, 64, 64), dtype=np.uint8)  # 64 px: the CNN's smallest input
    return images, np.arange(40) % 2


def batches_of(split) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in split]


def all_variants(image: np.ndarray) -> list[np.ndarray]:
    """The 8 rot90/flip variants of one (C, H, W) image, in CellDataset's numbering."""
    return [np.rot90(image[..., ::-1] if v >= 4 else image, v % 4, axes=(1, 2)) for v in range(8)]


def test_every_variant_is_the_one_celldataset_makes(cells):
    # Materialized, unshuffled: both list every variant of every image in the same order, so they must agree
    # exactly, pixel values (normalisation) included.
    images, labels = cells
    indices = np.arange(3, 33)
    dataset = CellDataset(images, labels, indices, MEAN, STD, augment="rot90_flip", materialize=True)
    loader = DataLoader(dataset, batch_size=7, shuffle=False, collate_fn=collate_batch)
    split = DeviceSplit(images, labels, indices, MEAN, STD, CPU, batch_size=7, augment="rot90_flip",
                        materialize=True)
    expected, got = list(loader), batches_of(split)
    assert len(got) == len(expected) == math.ceil(len(indices) * 8 / 7)
    for (x_ref, y_ref), (x, y) in zip(expected, got):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_online_variants_are_uniform_and_each_a_true_variant(cells):
    images, labels = cells
    split = DeviceSplit(images, labels, np.arange(40), MEAN, STD, CPU, batch_size=40, augment="rot90_flip",
                        shuffle=True, seed=3)
    counts = np.zeros(8)
    for epoch in range(1, 101):
        split.set_epoch(epoch)
        sources, variants = split._order()
        counts += np.bincount(variants.numpy(), minlength=8)
    assert counts.sum() == 4000 and counts.min() > 0.8 * 500 and counts.max() < 1.2 * 500, counts
    split.set_epoch(1)
    sources, variants = split._order()
    x = apply_variants(torch.from_numpy(images)[sources], variants)
    for image, source, variant in zip(x.numpy(), sources.numpy(), variants.numpy()):
        assert np.array_equal(image, all_variants(images[source])[variant])
    rot90_only = DeviceSplit(images, labels, np.arange(40), MEAN, STD, CPU, batch_size=40, augment="rot90",
                             shuffle=True)
    assert set(rot90_only._order()[1].tolist()) == {0, 1, 2, 3}


def test_same_seed_same_batches_and_each_epoch_differs(cells):
    images, labels = cells

    def run(seed: int, epoch: int) -> list:
        split = DeviceSplit(images, labels, np.arange(40), MEAN, STD, CPU, batch_size=8, augment="rot90",
                            shuffle=True, seed=seed)
        split.set_epoch(epoch)
        return batches_of(split)

    first, again = run(0, 1), run(0, 1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, run(0, 2)))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, run(1, 1)))


def test_ddp_ranks_take_disjoint_equal_strides_of_one_permutation(cells):
    images, labels = cells
    splits = [DeviceSplit(images, labels, np.arange(39), MEAN, STD, CPU, batch_size=5, shuffle=True, seed=2,
                          rank=rank, world_size=2) for rank in range(2)]
    orders = [split._order()[0].tolist() for split in splits]
    assert len(orders[0]) == len(orders[1]) == 19 and not set(orders[0]) & set(orders[1])
    assert len(splits[0]) == len(splits[1]) == 4


@pytest.mark.parametrize("setting,split_bytes,free,expected", [
    ("device", 10**12, 1, "device"),
    ("loader", 1, 10**12, "loader"),
    ("auto", 100, 400, "device"),  # exactly the stated share (a quarter) of free memory fits
    ("auto", 101, 400, "loader"),
])
def test_resolve_pipeline(setting, split_bytes, free, expected):
    assert resolve_pipeline(setting, split_bytes, CPU, free_bytes=free) == expected


def test_validation_gives_the_same_metrics_through_both_pipelines(cells):
    images, labels = cells
    torch.manual_seed(0)
    model = get_model("cnn", conv_layers=2, kernel_size=3, base_filters=8, dense=16, dropout=0.0, image_size=64)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0]))
    indices = np.arange(5, 37)
    loader = DataLoader(CellDataset(images, labels, indices, MEAN, STD), batch_size=10, collate_fn=collate_batch)
    split = DeviceSplit(images, labels, indices, MEAN, STD, CPU, batch_size=10)
    via_loader, via_device = validate(model, loader, loss_fn, CPU), validate(model, split, loss_fn, CPU)
    assert via_loader.keys() == via_device.keys()
    for key in via_loader.keys() - {"val_seconds"}:
        assert via_device[key] == pytest.approx(via_loader[key], rel=1e-6, abs=1e-9, nan_ok=True), key
    # And a training epoch through the device split steps the model like any other batches would.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    split_train = DeviceSplit(images, labels, indices, MEAN, STD, CPU, batch_size=8, augment="rot90",
                              shuffle=True, drop_last=True)
    result = train_one_epoch(model, split_train, optimizer, loss_fn, CPU)
    assert math.isfinite(result["train_loss"]) and 0.0 <= result["train_accuracy"] <= 1.0


def test_training_loop_runs_with_either_pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    results = {}
    for pipeline in ("device", "loader"):
        study = load_study(SMOKE, ["data.synthetic.subjects=8", "data.synthetic.cells_per_subject=10",
                                   "train.epochs=2", "train.batch_size=16", f"train.pipeline={pipeline}"])
        lines: list[str] = []
        session = LocalSession(use_gpu="false")
        results[pipeline] = run_training(study, session, log=lines.append)
        assert f"input pipeline: {pipeline}" in lines[0]
        assert [r["epoch"] for r in session.reports] == [1, 2] and math.isfinite(results[pipeline]["train_loss"])
    assert results["device"]["val_samples"] == results["loader"]["val_samples"]


def test_the_resident_split_is_copied_in_chunks_never_as_one_host_copy(monkeypatch):
    """DeviceSplit fills a preallocated tensor from bounded host chunks: equal to `images[chosen]`, and the host
    memory it allocates on the way (numpy's allocations are traced; the destination tensor is torch's) stays
    near a chunk, far below the split."""
    rng = np.random.default_rng(5)
    images, labels = rng.integers(0, 256, size=(200, 3, 64, 64), dtype=np.uint8), np.arange(200) % 2
    chosen = np.array([7, 3, 3, 199, 0, *range(10, 190)])  # out of order and with a repeat
    whole = images[chosen]
    per_image = int(np.prod(images.shape[1:]))
    monkeypatch.setattr(pipeline, "COPY_CHUNK_BYTES", 3 * per_image)
    tracemalloc.start()
    try:
        split = DeviceSplit(images, labels, chosen, MEAN, STD, CPU, batch_size=8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert torch.equal(split.images, torch.from_numpy(whole))
    assert torch.equal(split.labels, torch.from_numpy(labels[chosen]))
    assert peak < whole.nbytes / 8, (peak, whole.nbytes)  # a full host copy would be all of whole.nbytes
