"""Does cross-validation inside trials pick better models than one validation split? (issue 22's benchmark)

For each seed (a different synthetic data set, split and trial sample), the same N random configurations of the
smoke space are trained three times: with one train/validation split (`data.cv_folds: 0`) and with 3- and 5-fold
cross-validation by patient. No Ray, no MLflow: each trial is `run_training` in a `LocalSession`, fixed epochs (no
early stopping), so cross-validation spends K times the epochs. Per trial:

* selection score: its best fold-mean `val_f1_weighted` over the epochs (what Tune and ASHA see);
* test score: weighted F1 of its best-epoch model (for CV the ensemble of its fold models) on the test side, which
  is the same patients for all three schemes of a seed (drawn before and apart from the validation split; checked).

Per seed and scheme: Spearman's rank correlation between the trials' selection and test scores, the winner's (best
selection score; ties to the earlier trial) test score, its selection gap (selection minus test) and the epochs
spent; then medians over seeds and the issue's two targets (median winner's test higher with CV than with one
split; median gap with CV at most half of one split's).

    .venv/bin/python bench/cv_bench.py --seeds 0 1 2 3 4 --json /tmp/cv-bench.json
    .venv/bin/python bench/cv_bench.py --seeds 0 --trials 2 --epochs 1      # smoke check, well under a minute
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leukotune.tuner.config import StudyConfig, build_study, load_study, replace_train
from leukotune.tuner.evaluation.inference import TrainedModel, probabilities
from leukotune.tuner.metrics import classification_metrics
from leukotune.tuner.train.checkpoints import load_best
from leukotune.tuner.train.data_source import prepare_study_data
from leukotune.tuner.train.loop import run_training
from leukotune.tuner.train.sessions import LocalSession
from leukotune.tuner.tune.space import sample_points

STUDY = Path(__file__).resolve().parents[1] / "studies" / "smoke.yaml"
METRIC = "val_f1_weighted"
# The smoke space, plus dropout: small enough for 2 CPUs at 64 px, wide enough that trials differ.
SPACE = {"conv_layers": {"int": [2, 4]}, "kernel_size": {"choice": [3, 5]},
         "optimizer": {"choice": ["rmsprop", "adam"]}, "lr": {"loguniform": [1e-4, 1e-2]},
         "dropout": {"uniform": [0.0, 0.5]}}


def quiet(_message: str) -> None:
    pass


def base_study(args: argparse.Namespace, seed: int, folds: int, cache: Path) -> StudyConfig:
    """The smoke study on this seed's synthetic data; `folds` 0 is one validation split."""
    raw = load_study(STUDY).to_dict()
    raw["data"].update(synthetic={"subjects": args.subjects, "cells_per_subject": args.cells, "seed": seed},
                       seed=seed, split="subject", val_fraction=args.val_fraction,
                       test_fraction=args.test_fraction, cv_folds=folds, cache_dir=str(cache))
    raw["train"].update(epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size, seed=seed,
                        class_weights=args.class_weights)
    raw["resources"].update(use_gpu="false")
    return build_study(raw)


def trial_configs(study: StudyConfig, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` random points of SPACE, the same for every scheme of a seed."""
    return sample_points(SPACE, study.train.to_dict(), count, seed=seed)


def run_trial(study: StudyConfig, workdir: Path, test_idx: np.ndarray) -> dict[str, Any]:
    """Train one trial; its selection score from the loop's reports, its test score from its best.pt."""
    keep = workdir / "trial"
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir(parents=True)
    session = LocalSession(use_gpu="false", keep_dir=keep)
    start = time.perf_counter()
    last = run_training(study, session, log=quiet)
    seconds = time.perf_counter() - start
    selection = float(last[f"best_{METRIC}"])
    assert math.isclose(selection, max(r[METRIC] for r in session.reports)), "best_ value is not the epochs' best"
    best = load_best(keep / f"epoch_{last['epoch']:04d}")
    folds = study.data.cv_folds
    assert best.get("ensemble_members", 0) == (folds if folds else 0), "best.pt is not the trial's model"
    data = prepare_study_data(study)
    assert np.array_equal(data.test_idx, test_idx), "the test side moved"
    model = TrainedModel.from_checkpoint(best)
    prob = probabilities(model, data.images, data.test_idx, batch_size=64)
    test = classification_metrics(data.labels[data.test_idx], prob)
    shutil.rmtree(keep, ignore_errors=True)
    return {"selection": selection, "selection_std": last.get(f"best_{METRIC}_std"), "best_epoch": last["best_epoch"],
            "epochs_run": len(session.reports), "test": test["f1_weighted"], "test_roc_auc": test["roc_auc"],
            "seconds": round(seconds, 1)}


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho: Pearson's r of the ranks (ties averaged); NaN when either side is constant."""
    def ranks(values: list[float]) -> np.ndarray:
        values_arr = np.asarray(values, dtype=np.float64)
        order = np.argsort(values_arr, kind="mergesort")
        out = np.empty(len(values_arr))
        sorted_values = values_arr[order]
        _, first, counts = np.unique(sorted_values, return_index=True, return_counts=True)
        for begin, count in zip(first, counts):
            out[order[begin:begin + count]] = begin + (count - 1) / 2.0
        return out

    rx, ry = ranks(x), ranks(y)
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def summarise(trials: list[dict[str, Any]], folds: int) -> dict[str, Any]:
    selection = [t["selection"] for t in trials]
    test = [t["test"] for t in trials]
    winner = int(np.argmax(selection))  # first of equals, as a leaderboard sorted stably would
    return {"spearman": spearman(selection, test), "winner": winner, "winner_selection": selection[winner],
            "winner_test": test[winner], "gap": selection[winner] - test[winner],
            "mean_test": float(np.mean(test)), "best_test": float(np.max(test)),
            "epochs": sum(t["epochs_run"] for t in trials) * max(1, folds)}


def scheme_name(folds: int) -> str:
    return "one split" if folds == 0 else f"{folds}-fold CV"


def fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def print_row(seed: Any, folds: int, row: dict[str, Any]) -> None:
    print(f"seed {seed!s:>6}  {scheme_name(folds):<11}  spearman {fmt(row['spearman']):>6}  "
          f"winner test {fmt(row['winner_test'])}  selection {fmt(row['winner_selection'])}  "
          f"gap {row['gap']:+.3f}  epochs {row['epochs']:.0f}", flush=True)


def medians(results: dict[str, Any], folds: list[int]) -> dict[int, dict[str, float]]:
    """Per scheme, the median over seeds of every row value (a NaN correlation left out)."""
    def median(values: list[float]) -> float:
        values = [v for v in values if not math.isnan(v)]
        return statistics.median(values) if values else float("nan")

    rows = {k: [seed_rows[str(k)] for seed_rows in results["seeds"].values() if str(k) in seed_rows] for k in folds}
    keys = ("spearman", "winner_test", "winner_selection", "gap", "mean_test", "best_test", "epochs")
    return {k: {key: median([r[key] for r in rows[k]]) for key in keys} for k in folds}


def targets(summary: dict[int, dict[str, float]]) -> list[tuple[str, bool]]:
    """The issue's two targets for each cross-validated scheme, against the one split's medians."""
    if 0 not in summary:
        return []
    single = summary[0]
    checks = []
    for k, row in summary.items():
        if k == 0:
            continue
        checks.append((f"{k}-fold: median winner's test {row['winner_test']:.3f} > one split's "
                       f"{single['winner_test']:.3f}", row["winner_test"] > single["winner_test"]))
        checks.append((f"{k}-fold: median gap {row['gap']:+.3f} <= half of one split's ({single['gap'] / 2:+.3f})",
                       row["gap"] <= single["gap"] / 2))
    return checks


def markdown_table(results: dict[str, Any], folds: list[int]) -> str:
    """Every seed's rows and the medians, as BENCHMARKS.md shows them."""
    lines = ["| seed | scheme | Spearman (selection, test) | winner's selection | winner's test | selection gap | "
             "mean test of the trials | epochs |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    seeds = [(seed, rows) for seed, rows in results["seeds"].items()]
    for seed, rows in [*seeds, ("median", {str(k): row for k, row in medians(results, folds).items()})]:
        for k in folds:
            row = rows[str(k)]
            lines.append(f"| {seed} | {scheme_name(k)} | {fmt(row['spearman'])} | {row['winner_selection']:.3f} | "
                         f"{row['winner_test']:.3f} | {row['gap']:+.3f} | {row['mean_test']:.3f} | "
                         f"{row['epochs']:.0f} |")
    return "\n".join(lines)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Every seed's three schemes; each row printed as it finishes, and the JSON rewritten after each seed."""
    results: dict[str, Any] = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                               "space": SPACE, "seeds": {}, "trials": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cv-bench-") as tmp:
        workdir = Path(tmp)
        for seed in args.seeds:
            single = base_study(args, seed, 0, workdir / "cache")
            configs = trial_configs(single, args.trials, seed)
            test_idx = prepare_study_data(single).test_idx
            results["seeds"][str(seed)], results["trials"][str(seed)] = {}, {}
            for folds in args.folds:
                study = base_study(args, seed, folds, workdir / "cache")
                trials = [{"config": config, **run_trial(replace_train(study, config), workdir, test_idx)}
                          for config in configs]
                row = summarise(trials, folds)
                results["seeds"][str(seed)][str(folds)] = row
                results["trials"][str(seed)][str(folds)] = trials
                print_row(seed, folds, row)
            results["seconds"] = round(time.perf_counter() - started, 1)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--subjects", type=int, default=30)
    parser.add_argument("--cells", type=int, default=12, help="cells per subject")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 3, 5], help="0: one validation split")
    parser.add_argument("--val-fraction", type=float, default=0.25, help="of the one split (the smoke study's)")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--class-weights", action=argparse.BooleanOptionalAction, default=True,
                        help="train.class_weights (inverse class frequency in the loss); without them most trials "
                             "here never leave the majority class, so there is nothing to select")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every trial and row here (rewritten after each seed)")
    parser.add_argument("--report-only", action="store_true", help="print the table of an existing --json file")
    args = parser.parse_args()
    if args.report_only:
        if args.json is None:
            parser.error("--report-only needs --json")
        results = json.loads(args.json.read_text())
        folds = [int(k) for k in next(iter(results["seeds"].values()))]
    else:
        torch.set_num_threads(args.threads)  # as a trial on one CPU
        results, folds = run_benchmark(args), args.folds
    summary = medians(results, folds)
    for k, row in summary.items():
        print_row("median", k, row)
    checks = targets(summary)
    for text, met in checks:
        print(f"target {'MET' if met else 'NOT MET'}: {text}")
    print(markdown_table(results, folds))
    if not args.report_only:
        results["medians"] = {str(k): row for k, row in summary.items()}
        results["targets"] = [{"target": text, "met": met} for text, met in checks]
        print(f"{results['seconds']:.0f} s in all")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
