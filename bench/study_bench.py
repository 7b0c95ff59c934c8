"""Study-level benchmarks, side by side in one run on this machine.

1. Overhead: a FIFO study's wall time over the ideal, sum(bare trial compute) / concurrency, where each trial's
   bare compute is the same configuration trained alone outside Ray (LocalSession, one thread).
2. Search efficiency: TPE + ASHA against random search without early stopping, same trial budget and seeds:
   epochs each spent before a trial came within 1 point of the best validation metric either found.

    .venv/bin/python bench/study_bench.py [--overhead-trials 4] [--cells-per-subject 80] ...
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from leukotune.tuner.config import load_study, replace_train
from leukotune.tuner.train.loop import run_training
from leukotune.tuner.train.sessions import LocalSession
from leukotune.tuner.tune import plan_study, run_study

STUDY = Path(__file__).resolve().parents[1] / "studies" / "smoke.yaml"


def quiet(_message: str) -> None:
    pass


def overhead(args, workdir: Path) -> dict:
    study = load_study(STUDY, [
        f"data.synthetic.subjects={args.subjects}", f"data.synthetic.cells_per_subject={args.cells_per_subject}",
        f"train.epochs={args.overhead_epochs}", f"tune.num_samples={args.overhead_trials}", "tune.max_concurrent=2",
        "tune.scheduler=fifo", "tracking.experiment=bench-overhead", f"storage_path={workdir / 'runs'}",
        "train.image_size=128", "train.conv_layers=4"])
    plan = plan_study(study, resume=False, log=quiet)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    start = time.perf_counter()
    outcome = run_study(plan, log=quiet)
    study_wall = time.perf_counter() - start
    import ray

    ray.shutdown()
    configs = [replace_train(study, row["config"]) for row in outcome.leaderboard]  # what the study sampled
    bare = [bare_trial_seconds(config) for config in configs]
    ideal = sum(bare) / 2
    # The same trials, two bare processes at a time and no Ray: what this 2-vCPU machine itself allows.
    begin = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(bare_trial_seconds, configs, chunksize=1)
    bare_parallel = time.perf_counter() - begin
    return {"trials": len(bare), "bare_trial_s": bare, "ideal_s": ideal, "study_wall_s": study_wall,
            "ratio": study_wall / ideal, "bare_parallel_s": bare_parallel, "ratio_to_bare_parallel":
            study_wall / bare_parallel}


def bare_trial_seconds(study) -> float:
    """One trial's configuration trained alone, outside Ray, on one thread."""
    import torch

    torch.set_num_threads(1)
    begin = time.perf_counter()
    run_training(study, LocalSession(use_gpu="false"), log=quiet)
    return time.perf_counter() - begin


def epochs_to_within(client: MlflowClient, experiment: str, metric: str, threshold: float) -> int | None:
    """Epochs the study had spent, in time order, when any trial first reached `threshold`."""
    exp = client.get_experiment_by_name(experiment)
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("leukotune.kind") == "trial"]
    events = sorted((m.timestamp, m.value) for r in runs for m in client.get_metric_history(r.info.run_id, metric))
    for spent, (_, value) in enumerate(events, 1):
        if value >= threshold:
            return spent
    return None


def search_efficiency(args, workdir: Path) -> dict:
    base = [f"data.synthetic.subjects={args.subjects}", f"data.synthetic.cells_per_subject={args.cells_per_subject}",
            f"train.epochs={args.search_epochs}", f"tune.num_samples={args.search_trials}", "tune.max_concurrent=2",
            f"storage_path={workdir / 'runs'}", "tracking.log_models=false", "tune.seed=1"]
    variants = {"tpe_asha": ["tune.search=optuna", "tune.scheduler=asha"],
                "random_fifo": ["tune.search=random", "tune.scheduler=fifo"]}
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    best, totals = {}, {}
    import ray

    for name, extra in variants.items():
        study = load_study(STUDY, base + extra + [f"tracking.experiment=bench-{name}"])
        outcome = run_study(plan_study(study, resume=False, log=quiet), log=quiet)
        ray.shutdown()
        best[name] = max(r["best"] for r in outcome.leaderboard if r["best"] is not None)
        totals[name] = sum(int(r["epochs"]) for r in outcome.leaderboard)
    client = MlflowClient(tracking_uri=uri)
    threshold = max(best.values()) - 0.01
    reached = {name: epochs_to_within(client, f"bench-{name}", "val_f1_weighted", threshold) for name in variants}
    return {"best": best, "threshold": threshold, "epochs_to_threshold": reached, "total_epochs": totals}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=16)
    parser.add_argument("--cells-per-subject", type=int, default=60)
    parser.add_argument("--overhead-trials", type=int, default=4)
    parser.add_argument("--overhead-epochs", type=int, default=8)
    parser.add_argument("--search-trials", type=int, default=10)
    parser.add_argument("--search-epochs", type=int, default=6)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="leukotune-study-bench-"))
    os.environ.setdefault("LEUKOTUNE_CACHE_DIR", str(workdir / "cache"))
    report = {}
    if not args.skip_overhead:
        report["overhead"] = overhead(args, workdir)
        o = report["overhead"]
        print(f"| trials | bare trial s (mean) | ideal s | bare, 2 at a time, s | study wall s | ratio to ideal | "
              f"ratio to bare 2-at-a-time |\n|---|---|---|---|---|---|---|\n"
              f"| {o['trials']} | {sum(o['bare_trial_s']) / o['trials']:.1f} | {o['ideal_s']:.1f} | "
              f"{o['bare_parallel_s']:.1f} | {o['study_wall_s']:.1f} | {o['ratio']:.3f} | "
              f"{o['ratio_to_bare_parallel']:.3f} |")
    if not args.skip_search:
        report["search"] = search_efficiency(args, workdir)
        s = report["search"]
        print(f"\nthreshold: best - 0.01 = {s['threshold']:.4f}\n\n| search | best | epochs to threshold | "
              f"epochs in total |\n|---|---|---|---|")
        for name in s["best"]:
            print(f"| {name} | {s['best'][name]:.4f} | {s['epochs_to_threshold'][name]} | {s['total_epochs'][name]} |")
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
