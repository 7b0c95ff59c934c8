"""Validation split between DDP ranks (two gloo processes, no Ray): gathered metrics equal one process scoring all."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from leukotune.models import get_model
from leukotune.tuner.train.loop import validate
from leukotune.tuner.train.pipeline import DeviceSplit

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
CPU = torch.device("cpu")


def cells() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(45, 3, 64, 64), dtype=np.uint8)
    return images, rng.integers(0, 2, size=45), np.arange(2, 43)  # 41 cells: the shards differ in length


def score(indices: np.ndarray, gather: bool) -> dict[str, float]:
    images, labels, _ = cells()
    torch.manual_seed(0)
    model = get_model("cnn", conv_layers=2, kernel_size=3, base_filters=8, dense=16, dropout=0.0, image_size=64)
    split = DeviceSplit(images, labels, indices, MEAN, STD, CPU, batch_size=8)
    return validate(model, split, nn.CrossEntropyLoss(), CPU, gather=gather)


def rank_main(rank: int, world: int, rendezvous: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        metrics = score(cells()[2][rank::world], gather=True)  # the stride the loop gives each rank
        Path(out, f"rank{rank}.json").write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


def test_two_ranks_gather_the_metrics_of_the_whole_validation_set(tmp_path):
    mp.spawn(rank_main, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    whole = score(cells()[2], gather=False)
    for rank in range(2):
        gathered = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for key in whole.keys() - {"val_seconds"}:
            assert gathered[key] == pytest.approx(whole[key], rel=1e-6, abs=1e-9, nan_ok=True), (rank, key)
    assert sum(whole[f"val_cm_true_{t}_pred_{p}"] for t in ("hem", "all") for p in ("hem", "all")) == 41
