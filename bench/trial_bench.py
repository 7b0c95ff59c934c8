"""Trial throughput and start-up, side by side in one run.

1. Samples/s of one trial epoch through leukotune's loop (cache + CellDataset + DataLoader + metrics) against a
   bare PyTorch loop over the same uint8 tensors, same model, same batch size, same thread count.
2. Fixed seconds a trial costs besides its compute: inline in a Tune trial (the default for one worker) and a
   nested Ray Train TorchTrainer, on an already running local Ray. Measured as the slope between a study of
   FEW and of MANY sequential 1-epoch trials, so per-study set-up is reported apart.

    .venv/bin/python bench/trial_bench.py [--cells-per-subject 60] [--epochs 2]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from leukotune.models import build_optimizer, get_model
from leukotune.tuner.config import build_study, load_study, model_kwargs, replace_train
from leukotune.tuner.train.data_source import prepare_study_data
from leukotune.tuner.train.loop import run_training
from leukotune.tuner.train.sessions import LocalSession

FEW, MANY = 2, 6
STUDY = Path(__file__).resolve().parents[1] / "studies" / "smoke.yaml"


def bare_epoch_rate(study, epochs: int) -> float:
    """Plain PyTorch: tensors already normalised in memory, random permutation, no metrics beyond the loss."""
    train = study.train
    data = prepare_study_data(study)  # the same train side as the loop (the test subjects set aside)
    images = torch.from_numpy(np.ascontiguousarray(data.images[data.train_idx])).float().div_(255)
    images = (images - images.mean((0, 2, 3), keepdim=True)) / images.std((0, 2, 3), keepdim=True)
    labels = torch.from_numpy(data.labels[data.train_idx]).long()
    torch.manual_seed(0)
    model = get_model(train.model, **model_kwargs(train))
    optimizer = build_optimizer(train.optimizer, model.parameters(), lr=train.lr)
    loss_fn = nn.CrossEntropyLoss()
    rates = []
    for _ in range(epochs):
        model.train()
        start, seen = time.perf_counter(), 0
        for batch in torch.randperm(len(labels)).split(train.batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()
            seen += len(batch)
        rates.append(seen / (time.perf_counter() - start))
    return rates[-1]


def leukotune_epoch_rate(study) -> float:
    session = LocalSession(use_gpu="false")
    run_training(study, session, log=lambda _m: None)
    return session.reports[-1]["train_samples_per_second"]


def study_seconds(study, runtime: str, trials: int) -> tuple[float, float]:
    """Wall time of `trials` sequential 1-epoch trials in one Tune study, and the compute inside them."""
    from ray import tune

    from leukotune.tuner.cluster.capacity import shape_from_live_nodes
    from leukotune.tuner.cluster.trial_resources import decide_trial_resources
    from leukotune.tuner.tune.trainable import reuse_actors, tune_trial

    single = build_study({**study.to_dict(), "resources": {**study.resources.to_dict(), "trial_runtime": runtime,
                                                          "use_gpu": "false"}})
    single = replace_train(single, {"epochs": 1})
    resources = decide_trial_resources(single, shape_from_live_nodes())
    with tempfile.TemporaryDirectory() as storage:
        trainable = tune.with_resources(tune.with_parameters(
            tune_trial, study_dict={**single.to_dict(), "storage_path": storage}, resources=resources.to_dict()),
            resources.tune_request())
        tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=1,
                                                                  reuse_actors=reuse_actors(resources)),
                           run_config=tune.RunConfig(storage_path=storage, name=f"startup-{runtime}", verbose=0))
        start = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - start
    return wall, sum(r.metrics["train_seconds"] + r.metrics["val_seconds"] for r in grid)


def startup_seconds(study, runtime: str) -> dict[str, float]:
    """A trial's fixed cost as the slope between a short and a long study: per-study set-up cancels out."""
    few_wall, few_compute = study_seconds(study, runtime, FEW)
    many_wall, many_compute = study_seconds(study, runtime, MANY)
    per_trial = ((many_wall - many_compute) - (few_wall - few_compute)) / (MANY - FEW)
    per_study = (few_wall - few_compute) - FEW * per_trial
    return {"fixed_s_per_trial": per_trial, "fixed_s_per_study": per_study,
            "compute_s_per_trial": many_compute / MANY}


def _timestamp_loop(config: dict) -> None:
    import ray.train

    started = time.time()
    import torch.distributed  # noqa: F401 - what a real loop imports first

    with tempfile.TemporaryDirectory() as directory:
        # Train V2 keeps a run's metrics with its checkpoints, so the timestamps travel with an (empty) one.
        ray.train.report({"loop_start": started, "loop_end": time.time()},
                         checkpoint=ray.train.Checkpoint.from_directory(directory))


def ray_train_parts() -> dict[str, float]:
    """Where a TorchTrainer's fixed cost goes: before the worker's loop starts, and after it returns."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    parts = []
    with tempfile.TemporaryDirectory() as storage:
        for attempt in range(2):
            trainer = TorchTrainer(_timestamp_loop, scaling_config=ScalingConfig(num_workers=1),
                                   run_config=RunConfig(storage_path=storage, name=f"parts-{attempt}"))
            called = time.time()
            result = trainer.fit()
            returned = time.time()
            parts.append((result.metrics["loop_start"] - called, returned - result.metrics["loop_end"]))
    start_up, tear_down = parts[-1]  # the second run: Ray's own first-use costs are paid already
    return {"before_loop_s": start_up, "after_loop_s": tear_down}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells-per-subject", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--skip-startup", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("LEUKOTUNE_CACHE_DIR", tempfile.mkdtemp(prefix="leukotune-bench-"))
    study = load_study(STUDY, [f"data.synthetic.cells_per_subject={args.cells_per_subject}",
                               f"train.epochs={args.epochs}", "train.augment=none"])
    leukotune_epoch_rate(replace_train(study, {"epochs": 1}))  # warm cache
    ours = leukotune_epoch_rate(study)
    bare = bare_epoch_rate(study, args.epochs)
    report = {"leukotune_samples_per_s": ours, "bare_samples_per_s": bare, "ratio": ours / bare}
    print(f"| loop | samples/s (epoch {args.epochs}) |\n|---|---|\n| bare PyTorch | {bare:.0f} |\n"
          f"| leukotune trial | {ours:.0f} |\n\nratio leukotune/bare: {ours / bare:.2f} (target >= 0.9)")
    if not args.skip_startup:
        import ray

        start = time.perf_counter()
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", logging_level="WARNING", log_to_driver=False)
        report["ray_init_s"] = time.perf_counter() - start
        for runtime in ("inline", "ray_train"):
            report[f"startup_{runtime}"] = startup_seconds(study, runtime)
        report["ray_train_parts"] = ray_train_parts()
        ray.shutdown()
        print("\n| trial runtime | fixed s per trial | fixed s per study | compute s per trial |\n|---|---|---|---|")
        for runtime in ("inline", "ray_train"):
            parts = report[f"startup_{runtime}"]
            print(f"| {runtime} | {parts['fixed_s_per_trial']:.1f} | {parts['fixed_s_per_study']:.1f} | "
                  f"{parts['compute_s_per_trial']:.1f} |")
        print(f"\nray.init (once per study, not per trial): {report['ray_init_s']:.1f} s")
        parts = report["ray_train_parts"]
        print(f"TorchTrainer.fit(): {parts['before_loop_s']:.1f} s before the worker's loop starts (controller and "
              f"worker actors, placement group, torch process group), {parts['after_loop_s']:.1f} s after it returns "
              f"(worker group shut down, placement group removed, result collected)")
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
