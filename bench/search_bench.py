"""Search benchmark: does TPE beat random search, and does ASHA save epochs, each measured on its own?

Studies on the harder synthetic stand-in (24 subjects x 80 cells, subject split, weighted F1 around 0.7, so
configurations differ), each a real `run_study` (Ray Tune, OptunaSearch, MLflow child runs), 2 trials at a time:
  (a) sampler:   TPE + ASHA  against random + ASHA  (same scheduler, same seed)
  (b) scheduler: TPE + ASHA  against TPE + FIFO     (same sampler, same seed)
  (c) optional, both at once: TPE + ASHA against random + FIFO (`--variants` adds random_fifo)
Per pair and seed: the best value each reached; epochs each had spent, in time order, when a trial first came
within 1 point of the better of the two bests; the best each had reached after the same number of epochs (the
smaller of the two totals); epochs in total. Each finished study is saved to `--results`, so a rerun with the
same file skips it (an interrupted run resumes where it stopped) and `--report-only` prints what is there.

    nice -n 5 .venv/bin/python bench/search_bench.py --seeds 0 1 2 --trials 40 --results /tmp/search-bench.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray
import yaml
from mlflow.tracking import MlflowClient

from leukotune.tuner.config import load_study
from leukotune.tuner.tune import plan_study, run_study

STUDY = Path(__file__).resolve().parents[1] / "studies" / "smoke.yaml"
METRIC = "val_f1_weighted"
VARIANTS = {"tpe_asha": ("optuna", "asha"), "random_asha": ("random", "asha"), "tpe_fifo": ("optuna", "fifo"),
            "random_fifo": ("random", "fifo")}
PAIRS = {"sampler": ("tpe_asha", "random_asha"), "scheduler": ("tpe_asha", "tpe_fifo"),
         "both": ("tpe_asha", "random_fifo")}
# The CNN part of the paper's space: an SGD or too-small learning rate rarely leaves the majority class here, so a
# searcher that learns from results has something to learn. The smoke network at 64 px: small enough for 2 CPUs,
# and (unlike 8 filters and batches of 64, tried first) it leaves the majority class within 4 epochs.
SPACE = {"conv_layers": {"int": [2, 4]}, "kernel_size": {"choice": [3, 5, 7]},
         "optimizer": {"choice": ["rmsprop", "adam", "sgd"]}, "lr": {"loguniform": [1e-5, 1e-2]},
         "dropout": {"uniform": [0.0, 0.5]}}


def quiet(_message: str) -> None:
    pass


def space_text() -> str:
    # YAML 1.1 reads JSON's `1e-05` as a string; PyYAML's own dump (`1.0e-05`) reads back as a number.
    return yaml.safe_dump(SPACE, default_flow_style=True, width=1_000).strip()


def study_overrides(args, variant: str, seed: int, workdir: Path) -> list[str]:
    search, scheduler = VARIANTS[variant]
    return [f"data.synthetic.subjects={args.subjects}", f"data.synthetic.cells_per_subject={args.cells_per_subject}",
            "train.image_size=64", "train.base_filters=16", "train.dense=64", "train.batch_size=16",
            f"train.epochs={args.epochs}", f"tune.num_samples={args.trials}", "tune.max_concurrent=2",
            f"tune.search={search}", f"tune.scheduler={scheduler}", "tune.grace_period=1", "tune.reduction_factor=2",
            f"tune.seed={seed}", f"tune.space={space_text()}", f"tracking.experiment=bench-{variant}-s{seed}",
            "tracking.log_models=false", f"name=bench-{variant}-s{seed}", f"storage_path={workdir / 'runs'}"]


def metric_events(client: MlflowClient, experiment: str) -> list[float]:
    """Every epoch's metric of every trial of the study, in the order they were reported."""
    exp = client.get_experiment_by_name(experiment)
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=10_000)
            if r.data.tags.get("leukotune.kind") == "trial"]
    events = sorted((m.timestamp, m.step, m.value) for r in runs for m in client.get_metric_history(r.info.run_id, METRIC))
    return [value for _, _, value in events]


def run_one(args, variant: str, seed: int, workdir: Path) -> list[float]:
    study = load_study(STUDY, study_overrides(args, variant, seed, workdir))
    run_study(plan_study(study, resume=False, log=quiet), log=quiet)
    ray.shutdown()
    return metric_events(MlflowClient(), f"bench-{variant}-s{seed}")


def epochs_to(events: list[float], threshold: float) -> int | None:
    return next((spent for spent, value in enumerate(events, 1) if value >= threshold), None)


def compare(first: list[float], second: list[float]) -> dict:
    """One pair on one seed: best, epochs to within 1 point of the better best, best at equal epochs, totals."""
    threshold = max(max(first), max(second)) - 0.01
    equal = min(len(first), len(second))
    return {"best": [max(first), max(second)], "threshold": threshold,
            "epochs_to_threshold": [epochs_to(first, threshold), epochs_to(second, threshold)],
            "equal_epochs": equal, "best_at_equal_epochs": [max(first[:equal]), max(second[:equal])],
            "total_epochs": [len(first), len(second)]}


def cell(value) -> str:
    if value is None:
        return "never"
    # Metrics lie in [0, 1]; anything larger is a count of epochs (or a median of counts).
    return f"{value:.4f}" if isinstance(value, float) and value <= 1 else f"{value:g}"


def median(values: list) -> str:
    # "never" ranks after any number of epochs, so a median over seeds still exists when one study never got there.
    middle = statistics.median([math.inf if v is None else v for v in values])
    return cell(None if middle == math.inf else middle)


def pair_table(pair: str, rows: dict[int, dict]) -> str:
    a, b = PAIRS[pair]
    header = (f"| seed | best {a} | best {b} | epochs to best-0.01, {a} | same, {b} | equal epochs | best at equal "
              f"epochs, {a} | same, {b} | epochs in total, {a} | same, {b} |")
    lines = [f"\n({pair}) {a} vs {b}\n", header, "|---" * 10 + "|"]
    keys = ["best", "epochs_to_threshold", "best_at_equal_epochs", "total_epochs"]
    for seed, row in rows.items():
        values = [cell(v) for key in keys[:2] for v in row[key]]
        values += [str(row["equal_epochs"])] + [cell(v) for key in keys[2:] for v in row[key]]
        lines.append(f"| {seed} | " + " | ".join(values) + " |")
    med = [median([row[key][i] for row in rows.values()]) for key in keys[:2] for i in (0, 1)]
    med += [median([row["equal_epochs"] for row in rows.values()])]
    med += [median([row[key][i] for row in rows.values()]) for key in keys[2:] for i in (0, 1)]
    lines.append("| median | " + " | ".join(med) + " |")
    wins = sum(row["best_at_equal_epochs"][0] > row["best_at_equal_epochs"][1] for row in rows.values())
    lines.append(f"\n{a} ahead at equal epochs in {wins} of {len(rows)} seeds")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--cells-per-subject", type=int, default=80)
    parser.add_argument("--variants", nargs="+", default=["tpe_asha", "random_asha", "tpe_fifo"],
                        choices=sorted(VARIANTS))
    parser.add_argument("--results", type=Path, default=Path(tempfile.gettempdir()) / "leukotune-search-bench.json")
    parser.add_argument("--report-only", action="store_true", help="print the tables from --results, run nothing")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="leukotune-search-bench-"))
    os.environ.setdefault("LEUKOTUNE_CACHE_DIR", str(Path(tempfile.gettempdir()) / "leukotune-search-bench-cache"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    # Variant by variant, so the sampler pair (the first two) is complete on every seed before FIFO starts.
    for variant in [] if args.report_only else args.variants:
        for seed in args.seeds:
            key = study_key(variant, seed, args)
            if key not in results:
                results[key] = run_one(args, variant, seed, workdir)
                args.results.write_text(json.dumps(results))
            print(f"{key}: best {max(results[key]):.4f}, {len(results[key])} epochs", flush=True)
    for pair, (a, b) in PAIRS.items():
        rows = {seed: compare(results[study_key(a, seed, args)], results[study_key(b, seed, args)])
                for seed in args.seeds if study_key(a, seed, args) in results and study_key(b, seed, args) in results}
        if rows:
            print(pair_table(pair, rows))


def study_key(variant: str, seed: int, args) -> str:
    return f"{variant}/s{seed}/{args.trials}x{args.epochs}/{args.subjects}x{args.cells_per_subject}"

if __name__ == "__main__":
    main()
