"""The Ray Train runtime with two DDP workers on CPU (gloo): sharded validation, and a worker killed mid-run.

One short `leukotune train` run serves every assertion: rank 0's worker is SIGKILLed as soon as it reports epoch 2,
and the run must go on from its last checkpoint (not from epoch 0) and finish with metrics over the whole validation set.
"""
from __future__ import annotations

import os
import re
import signal

import pytest

from leukotune.tuner.config import load_study
from leukotune.tuner.train.data_source import prepare_study_data

from conftest import SMOKE, sets
from studyproc import StudyProcess

OVERRIDES = ["data.synthetic.subjects=8", "data.synthetic.cells_per_subject=10", "train.epochs=8",
             "train.batch_size=16", "resources.workers=2", "resources.cpus_per_worker=1", "resources.max_failures=2",
             "train.pipeline=device"]


@pytest.mark.slow
@pytest.mark.e2e
def test_two_workers_shard_validation_and_survive_a_killed_worker(tmp_path, env, monkeypatch):
    run = StudyProcess(["train", "--config", str(SMOKE), *sets([*OVERRIDES, f"storage_path={tmp_path / 'runs'}"])],
                       tmp_path, env)
    try:
        # Epoch 2's line: by then the controller has taken epoch 1's report and checkpoint from the worker.
        assert run.wait_for(r"epoch +2 .*train_loss"), "".join(run.lines)[-3000:]
        line = next(line for line in run.lines if re.search(r"epoch +2 .*train_loss", line))
        worker = int(re.search(r"pid=(\d+)", line).group(1))  # Ray prefixes worker output with its pid
        os.kill(worker, signal.SIGKILL)
        output = run.finish(timeout=400)
    finally:
        if run.process.poll() is None:
            os.killpg(run.pid, signal.SIGTERM)
    assert run.process.returncode == 0, output[-4000:]
    resumed = re.search(r"resumed from checkpoint at epoch (\d+)", output)
    assert resumed and int(resumed.group(1)) >= 1, output[-4000:]
    after = output[resumed.end():]
    assert not re.search(r"epoch +1 .*train_loss", after)  # the finished epochs are not trained again
    assert re.search(r"epoch +8 .*train_loss", after) and "input pipeline: device" in output
    # Each rank scored half the validation set; the reported confusion matrix counts all of it, once.
    monkeypatch.setenv("LEUKOTUNE_CACHE_DIR", env["LEUKOTUNE_CACHE_DIR"])
    val_cells = len(prepare_study_data(load_study(SMOKE, OVERRIDES)).val_idx)
    confusion = re.search(r"confusion \(rows true [^)]*\): \[\[(\d+), (\d+)\], \[(\d+), (\d+)\]\]", output)
    assert confusion, output[-2000:]
    assert sum(map(int, confusion.groups())) == val_cells
