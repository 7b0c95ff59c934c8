"""Grow benchmark: does an extended study match one run with the whole budget, and does a warm start pay?

On the search benchmark's synthetic problem and space (bench/search_bench.py), TPE + ASHA, 2 trials at a time, per
seed:
  (a) extend: a study of `--first` trials extended with `--resume --set tune.num_samples=<total>` (the same
      parent run, the searcher restored), against one study of `--total` trials with the same seed;
  (b) warm start: a new study of `--new` trials warm-started from the `--first`-trial study of (a) (before it was
      extended), against a cold start of `--new` trials; both with seed + 1000, so the cold one's startup draws are
      not the source's.
Per pair: the best each reached, epochs each had spent (in time order) when a trial first came within 1 point of
the better of the two bests, and epochs in total; the warm-started study's epochs are only its own (the source's
were spent before). Finished studies are saved to `--results`; a rerun skips them, `--report-only` prints the tables.

    nice -n 5 .venv/bin/python bench/grow_bench.py --seeds 0 1 2 --first 20 --total 40 --new 20   # the issue's sizes
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray
from mlflow.tracking import MlflowClient

from leukotune.tuner.config import load_study
from leukotune.tuner.tune import plan_study, run_study
from search_bench import STUDY, compare, median, metric_events, quiet, space_text


def overrides(args, name: str, seed: int, trials: int, workdir: Path, warm_start: str | None = None) -> list[str]:
    values = [f"data.synthetic.subjects={args.subjects}", f"data.synthetic.cells_per_subject={args.cells_per_subject}",
              "train.image_size=64", "train.base_filters=16", "train.dense=64", "train.batch_size=16",
              f"train.epochs={args.epochs}", f"tune.num_samples={trials}", "tune.max_concurrent=2",
              "tune.search=optuna", "tune.scheduler=asha", "tune.grace_period=1", "tune.reduction_factor=2",
              f"tune.seed={seed}", f"tune.space={space_text()}", "tune.test_top_k=0", f"tracking.experiment={name}",
              "tracking.log_models=0", f"name={name}", f"storage_path={workdir / 'runs'}"]
    return values + ([f"tune.warm_start={warm_start}"] if warm_start else [])


def run(args, name: str, seed: int, trials: int, workdir: Path, resume: bool = False,
        warm_start: str | None = None) -> list[float]:
    study = load_study(STUDY, overrides(args, name, seed, trials, workdir, warm_start))
    run_study(plan_study(study, resume=resume, log=quiet), log=quiet)
    ray.shutdown()
    return metric_events(MlflowClient(), name)


def run_seed(args, seed: int, workdir: Path, results: dict, save) -> None:
    size = f"{args.first}-{args.total}-{args.new}x{args.epochs}/{args.subjects}x{args.cells_per_subject}"
    source, whole = f"grow-source-s{seed}-{size}", f"grow-whole-s{seed}-{size}"
    steps = [  # (results key, what to run); the warm start reads the source before it is extended
        (f"{source}/first", lambda: run(args, name_of(source), seed, args.first, workdir)),
        (f"{source}/warm", lambda: run(args, name_of(source) + "-warm", seed + 1000, args.new, workdir,
                                       warm_start=name_of(source))),
        (f"{source}/cold", lambda: run(args, name_of(source) + "-cold", seed + 1000, args.new, workdir)),
        (f"{source}/extended", lambda: run(args, name_of(source), seed, args.total, workdir, resume=True)),
        (f"{whole}/whole", lambda: run(args, name_of(whole), seed, args.total, workdir)),
    ]
    for key, step in steps:
        if key not in results:
            results[key] = step()
            save()
        print(f"{key}: best {max(results[key]):.4f}, {len(results[key])} epochs", flush=True)


def name_of(key: str) -> str:
    """A study and experiment name the schema accepts (letters, digits, `_.-`)."""
    return key.replace("/", "-")


def table(title: str, labels: tuple[str, str], rows: dict[int, dict]) -> str:
    a, b = labels
    lines = [f"\n{title}\n", f"| seed | best, {a} | best, {b} | epochs to within 1 point, {a} | same, {b} | "
             f"epochs in total, {a} | same, {b} |", "|---" * 7 + "|"]
    keys = ("best", "epochs_to_threshold", "total_epochs")
    for seed, row in rows.items():
        lines.append(f"| {seed} | " + " | ".join(median([v]) for key in keys for v in row[key]) + " |")
    lines.append("| median | " + " | ".join(median([row[key][i] for row in rows.values()])
                                          for key in keys for i in (0, 1)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--first", type=int, default=20, help="trials of the study that is then extended")
    parser.add_argument("--total", type=int, default=40, help="trials after the extension (and of the one-shot study)")
    parser.add_argument("--new", type=int, default=20, help="trials of the warm-started and the cold study")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--cells-per-subject", type=int, default=80)
    parser.add_argument("--results", type=Path, default=Path(tempfile.gettempdir()) / "leukotune-grow-bench.json")
    parser.add_argument("--workdir", type=Path, help="where the studies and their MLflow store live (default: a new "
                                                     "temporary folder; give the same one to resume a rerun)")
    parser.add_argument("--report-only", action="store_true", help="print the tables from --results, run nothing")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="leukotune-grow-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LEUKOTUNE_CACHE_DIR", str(Path(tempfile.gettempdir()) / "leukotune-search-bench-cache"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    save = lambda: args.results.write_text(json.dumps(results))  # noqa: E731
    size = f"{args.first}-{args.total}-{args.new}x{args.epochs}/{args.subjects}x{args.cells_per_subject}"
    for seed in [] if args.report_only else args.seeds:
        run_seed(args, seed, workdir, results, save)
    extend, warm = {}, {}
    for seed in args.seeds:
        source, whole = f"grow-source-s{seed}-{size}", f"grow-whole-s{seed}-{size}"
        if f"{source}/extended" in results and f"{whole}/whole" in results:
            extend[seed] = compare(results[f"{source}/extended"], results[f"{whole}/whole"])
        if f"{source}/warm" in results and f"{source}/cold" in results:
            warm[seed] = compare(results[f"{source}/warm"], results[f"{source}/cold"])
    if extend:
        print(table(f"(a) {args.first} trials extended to {args.total} against {args.total} at once",
                    ("extended", "at once"), extend))
    if warm:
        print(table(f"(b) {args.new} new trials warm-started from {args.first} against a cold start",
                    ("warm", "cold"), warm))


if __name__ == "__main__":
    main()
