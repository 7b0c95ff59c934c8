"""Trial throughput and start-up, side by side in one run.

1. Samples/s of one trial epoch through leukotune's loop (cache + CellDataset + DataLoader + metrics) against a
   bare PyTorch loop over the same uint8 tensors, same model, same batch size, same thread count.
2. Fixed seconds a trial costs before its first epoch: inline in a Tune trial (the default for one worker)
   and a nested Ray Train TorchTrainer, measured on an already running local Ray.

    .venv/bin/python bench/trial_bench.py [--cells-per-subject 60] [--epochs 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from data import prepare_data  # noqa: E402
from models import build_optimizer, get_model  # noqa: E402
from tuner.config import load_study, model_kwargs  # noqa: E402
from tuner.datasets import resolve_data_root  # noqa: E402
from tuner.sessions import LocalSession  # noqa: E402
from tuner.trial import run_training  # noqa: E402

TRIALS = 3
STUDY = Path(__file__).resolve().parents[1] / "studies" / "smoke.yaml"


def bare_epoch_rate(study, epochs: int) -> float:
    """Plain PyTorch: tensors already normalised in memory, random permutation, no metrics beyond the loss."""
    train = study.train
    data = prepare_data(resolve_data_root(study.data), size=train.image_size, color=train.color,
                        split=study.data.split, val_fraction=study.data.val_fraction, seed=study.data.seed,
                        cache_dir=study.data.cache_dir)
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


def startup_seconds(study, runtime: str) -> dict[str, float]:
    """(Wall time of TRIALS sequential 1-epoch trials minus their compute) / TRIALS: a trial's fixed cost."""
    from ray import tune

    from tuner.study import tune_trial

    single = dataclasses.replace(study, resources=dataclasses.replace(study.resources, trial_runtime=runtime))
    single = dataclasses.replace(single, train=dataclasses.replace(single.train, epochs=1))
    results = {}
    with tempfile.TemporaryDirectory() as storage:
        resources = {"CPU": 0} if runtime == "ray_train" else {"CPU": 1}
        trainable = tune.with_resources(tune.with_parameters(
            tune_trial, study_dict={**single.to_dict(), "storage_path": storage}), resources)
        tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(num_samples=TRIALS, max_concurrent_trials=1),
                           run_config=tune.RunConfig(storage_path=storage, name=f"startup-{runtime}", verbose=0))
        start = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - start
    compute = sum(r.metrics["train_seconds"] + r.metrics["val_seconds"] for r in grid)
    return {"wall_s": wall, "epoch_compute_s": compute, "fixed_s_per_trial": (wall - compute) / TRIALS}


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
    leukotune_epoch_rate(dataclasses.replace(study, train=dataclasses.replace(study.train, epochs=1)))  # warm cache
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
        ray.shutdown()
        print(f"\n| trial runtime | wall s ({TRIALS} trials) | compute s | fixed s per trial |\n|---|---|---|---|")
        for runtime in ("inline", "ray_train"):
            parts = report[f"startup_{runtime}"]
            print(f"| {runtime} | {parts['wall_s']:.1f} | {parts['epoch_compute_s']:.1f} | "
                  f"{parts['fixed_s_per_trial']:.1f} |")
        print(f"\nray.init (once per study, not per trial): {report['ray_init_s']:.1f} s")
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
