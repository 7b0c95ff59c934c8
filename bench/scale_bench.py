"""A study of hundreds of one-second trials: does it finish cleanly, does the driver's memory stay put, and how close
is its wall time to the ideal (the trials' own compute divided by the concurrency)?

    nice .venv/bin/python bench/scale_bench.py [--trials 200] [--bare-samples 10] [--keep]

The trials are the smoke study's CNN (2-3 conv layers) at 64 px (the schema's smallest image size), one epoch on
16 synthetic subjects x 48 cells (about a second each here), FIFO, two at a time. Three ideals are reported, each
as total trial compute / 2: from Tune's own `time_total_s` of each trial (time inside the trainable); from
`--bare-samples` of the sampled configurations (spread over the leaderboard) trained alone outside Ray; and from
the same configurations trained outside Ray two processes at a time (what the 2 vCPUs allow).

Its working folder (the study's runs, MLflow's store, the data cache: about 2 GB for 200 trials) is removed at the
end, however the run ends; `--keep` leaves it and prints where it is.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from mlflow.tracking import MlflowClient
from study_bench import bare_trial_seconds, quiet  # bench/ is on sys.path when a script in it runs

from leukotune.tuner.config import load_study, replace_train
from leukotune.tuner.tune import plan_study, run_study

STUDY = Path(__file__).resolve().parents[1] / "studies" / "smoke.yaml"
MIB = 1024 * 1024


def rss_mib() -> float:
    """This process's resident memory (Linux: /proc/self/statm counts pages)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


class RssSampler(threading.Thread):
    """The driver's resident memory every few seconds while the study runs."""

    def __init__(self, every_s: float = 5.0):
        super().__init__(daemon=True)
        self.every_s, self.samples, self.stop = every_s, [], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.samples.append(rss_mib())


def trial_times(study_dir: Path) -> tuple[list[float], float]:
    """Tune's `time_total_s` of each trial (time spent inside the trainable), from its result.json, and the span
    from the first trial's start to the last one's end (Ray's start and the study's closing work left out)."""
    seconds, starts, ends = [], [], []
    for result_file in study_dir.glob("*/result.json"):
        lines = [line for line in result_file.read_text().splitlines() if line.strip()]
        if lines:
            last = json.loads(lines[-1])
            seconds.append(float(last["time_total_s"]))
            ends.append(float(last["timestamp"]))
            starts.append(float(last["timestamp"]) - float(last["time_total_s"]))
    return seconds, (max(ends) - min(starts)) if ends else 0.0


def warm_up() -> None:
    import leukotune.tuner.train.loop  # noqa: F401  (imports paid before any trial is timed)


def warm_up_task(_index: int) -> None:
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--bare-samples", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the working folder (runs, MLflow, cache)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="leukotune-scale-"))
    try:
        print(json.dumps(measure(args, workdir), indent=2))
    finally:
        if args.keep:
            print(f"working folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def measure(args: argparse.Namespace, workdir: Path) -> dict:
    """Run the study in `workdir` and the bare trials; the report's figures."""
    os.environ["LEUKOTUNE_CACHE_DIR"] = str(workdir / "cache")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    study = load_study(STUDY, [
        "data.synthetic.subjects=16", "data.synthetic.cells_per_subject=48", "train.image_size=64",
        "train.epochs=1", "train.batch_size=16", f"tune.num_samples={args.trials}", "tune.max_concurrent=2",
        "tune.scheduler=fifo", "tune.space={conv_layers: {int: [2, 3]}, lr: {loguniform: [0.0001, 0.01]}}",
        "tracking.experiment=bench-scale", "tracking.log_models=0", f"storage_path={workdir / 'runs'}"])
    plan = plan_study(study, resume=False, log=quiet)
    rss_start = rss_mib()
    sampler = RssSampler()
    sampler.start()
    begin = time.perf_counter()
    outcome = run_study(plan, log=quiet)
    wall = time.perf_counter() - begin
    sampler.stop.set()
    rss_end = rss_mib()
    import ray

    concurrency = study.tune.max_concurrent
    ray.shutdown()

    client = MlflowClient()
    experiment = client.get_experiment_by_name("bench-scale")
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    children = [r for r in runs if r.data.tags.get("leukotune.kind") == "trial"]
    compute, span = trial_times(plan.directory)
    # Configurations spread over the whole leaderboard (the top ones alone lean to the larger networks).
    rows = outcome.leaderboard
    configs = [replace_train(study, row["config"]) for row in rows[:: max(1, len(rows) // args.bare_samples)]]
    configs = configs[: args.bare_samples]
    bare = [bare_trial_seconds(config) for config in configs]
    bare_mean = sum(bare) / max(1, len(bare))
    # The same configurations two bare processes at a time (each timing itself): what the 2 vCPUs allow per trial
    # when two run at once, without Ray or MLflow.
    with multiprocessing.get_context("spawn").Pool(2, initializer=warm_up) as pool:
        pool.map(warm_up_task, range(2))
        paired = pool.map(bare_trial_seconds, configs, chunksize=1)
    paired_mean = sum(paired) / max(1, len(paired))
    report = {
        "trials": args.trials, "complete": outcome.complete, "child_runs": len(children),
        "child_runs_running": sum(r.info.status == "RUNNING" for r in children),
        "child_runs_finished": sum(r.info.status == "FINISHED" for r in children),
        "wall_s": round(wall, 1),
        "tune_trial_compute_mean_s": round(sum(compute) / max(1, len(compute)), 3),
        "ideal_from_tune_s": round(sum(compute) / concurrency, 1),
        "ratio_to_ideal_from_tune": round(wall / (sum(compute) / concurrency), 2) if compute else None,
        "trials_span_s": round(span, 1),
        "span_ratio_to_ideal_from_tune": round(span / (sum(compute) / concurrency), 2) if compute else None,
        "bare_trial_mean_s": round(bare_mean, 3),
        "ideal_from_bare_s": round(bare_mean * args.trials / concurrency, 1),
        "ratio_to_ideal_from_bare": round(wall / (bare_mean * args.trials / concurrency), 2),
        "bare_trial_mean_two_at_a_time_s": round(paired_mean, 3),
        "ideal_from_bare_two_at_a_time_s": round(paired_mean * args.trials / concurrency, 1),
        "ratio_to_ideal_from_bare_two_at_a_time": round(wall / (paired_mean * args.trials / concurrency), 2),
        "span_ratio_to_ideal_from_bare_two_at_a_time": round(span / (paired_mean * args.trials / concurrency), 2),
        "driver_rss_mib": {"start": round(rss_start), "end": round(rss_end),
                           "peak_sampled": round(max(sampler.samples, default=rss_end))},
        "workdir": str(workdir) if args.keep else None,
    }
    return report


if __name__ == "__main__":
    main()
