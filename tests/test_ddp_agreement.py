"""DDP that cannot hang (two gloo processes, no Ray): what ranks must agree on is decided once, on rank 0, and
broadcast; the epoch's loss and throughput are over all ranks.

Rank 1 is made to see almost no free memory, so alone it would pick the DataLoader while rank 0 keeps the split
on its device: the two would step through different batch counts and wait in DDP's all-reduce for ever.
"""
from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from leukotune.tuner.config import load_study
from leukotune.tuner.train import pipeline
from leukotune.tuner.train.data_source import prepare_study_data
from leukotune.tuner.train.loop import rank0_decides, run_training
from leukotune.tuner.train.sessions import LocalSession

from conftest import SMOKE

OVERRIDES = ["data.synthetic.subjects=8", "data.synthetic.cells_per_subject=10", "train.epochs=2",
             "train.batch_size=8", "train.pipeline=auto", "train.augment=none"]


class GlooSession(LocalSession):
    def __init__(self, rank: int, world: int) -> None:
        super().__init__(use_gpu="false")
        self.world_rank, self.world_size = rank, world

    def prepare_model(self, model):
        return DistributedDataParallel(model)


def rank_main(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        session = GlooSession(rank, world)
        if rank == 1:
            pipeline.free_memory_bytes = lambda _device: 1  # this rank alone would choose the DataLoader
        decided = rank0_decides(f"rank {rank}'s choice", session)
        run_training(load_study(SMOKE, OVERRIDES), session, log=lambda _m: None)
        Path(tmp, f"rank{rank}.json").write_text(json.dumps({"decided": decided, "reports": session.reports}))
    finally:
        dist.destroy_process_group()


def test_ranks_follow_rank_0_and_report_the_epoch_over_all_ranks(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    train_cells = len(prepare_study_data(load_study(SMOKE, OVERRIDES)).train_idx)  # the cache, made once here
    context = multiprocessing.get_context("spawn")
    ranks = [context.Process(target=rank_main, args=(rank, 2, str(tmp_path))) for rank in range(2)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=300)
    hung = [process.pid for process in ranks if process.is_alive()]
    for process in ranks:
        if process.is_alive():
            process.kill()
    assert not hung and all(process.exitcode == 0 for process in ranks), (hung, [p.exitcode for p in ranks])
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [r["decided"] for r in results] == ["rank 0's choice"] * 2
    per_rank = (train_cells // 2) // 8 * 8  # equal shares, whole batches
    for epoch in range(2):
        reports = [r["reports"][epoch] for r in results]
        assert [r["pipeline"] for r in reports] == ["device", "device"]
        assert reports[0]["train_loss"] == reports[1]["train_loss"]  # over all ranks, the same on each
        for report in reports:
            images = report["train_samples_per_second"] * report["train_seconds"]
            assert images == pytest.approx(2 * per_rank, rel=1e-6)
    assert np.isfinite(results[0]["reports"][-1]["val_loss"])
