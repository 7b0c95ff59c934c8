"""Honest numbers on the synthetic stand-in: how much the search's own choice flatters its winner, and how much
the image split's patient leak inflates validation, both measured on the untouched test side.

For each seed, one study with `data.split: subject` and one with `data.split: image` (same data, same test
patients: the test side is drawn before, and independently of, the validation split). Reported per split, as
means over seeds: the winner's best validation score, its test score, and the selection gap (validation minus
test). Also the cost of the patient bootstrap (2,000 cells of 20 subjects, 2,000 resamples).

    flock /tmp/leukotune-ray.lock .venv/bin/python bench/honest_bench.py [--seeds 0 1] [--trials 6] [--epochs 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from mlflow.tracking import MlflowClient

from leukotune.tuner.config import load_study
from leukotune.tuner.evaluation.intervals import patient_bootstrap
from leukotune.tuner.tune import plan_study, run_study

STUDY = Path(__file__).resolve().parents[1] / "studies" / "smoke.yaml"
METRIC = "val_f1_weighted"


def quiet(_message: str) -> None:
    pass


def one_study(args, workdir: Path, split: str, seed: int) -> dict[str, float]:
    """The winner's validation and test scores for one study; the test side is the same for both splits."""
    experiment = f"honest-{split}-{seed}"
    study = load_study(STUDY, [
        f"data.synthetic.subjects={args.subjects}", f"data.synthetic.cells_per_subject={args.cells_per_subject}",
        f"data.synthetic.seed={seed}", f"data.seed={seed}", f"data.split={split}", f"tune.seed={seed}",
        f"train.epochs={args.epochs}", f"tune.num_samples={args.trials}", "tune.max_concurrent=2",
        f"tracking.experiment={experiment}", f"storage_path={workdir / 'runs'}",
        f"data.cache_dir={workdir / 'cache'}"])
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        outcome = run_study(plan_study(study, resume=False, log=quiet), log=quiet)
    finally:
        ray.shutdown()
    parent = MlflowClient(tracking_uri=uri).get_run(outcome.parent_run_id).data.metrics
    return {"val": parent[f"best_{METRIC}"], "test": parent["test_f1_weighted"], "gap": parent["selection_gap"],
            "test_low": parent["test_f1_weighted_ci95_low"], "test_high": parent["test_f1_weighted_ci95_high"]}


def bootstrap_seconds(cells: int = 2000, subjects: int = 20, resamples: int = 2000, repeats: int = 5) -> float:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(subjects) % 3 != 0, cells // subjects).astype(np.int64)
    prob = rng.random(len(labels))
    ids = np.repeat([f"S{i}" for i in range(subjects)], cells // subjects)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        patient_bootstrap(labels, prob, ids, resamples=resamples)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--cells-per-subject", type=int, default=40)
    args = parser.parse_args()
    rows: dict[str, list[dict[str, float]]] = {"subject": [], "image": []}
    with tempfile.TemporaryDirectory(prefix="honest-bench-") as tmp:
        for seed in args.seeds:
            for split in rows:
                rows[split].append(one_study(args, Path(tmp), split, seed))
                print(f"seed {seed} {split:<7} {json.dumps({k: round(v, 4) for k, v in rows[split][-1].items()})}",
                      flush=True)
    summary = {split: {key: round(statistics.mean(r[key] for r in runs), 4) for key in ("val", "test", "gap")}
               for split, runs in rows.items()}
    summary["image_leak_on_validation"] = round(summary["image"]["val"] - summary["subject"]["val"], 4)
    summary["image_minus_subject_on_test"] = round(summary["image"]["test"] - summary["subject"]["test"], 4)
    summary["bootstrap_seconds_2000_cells_2000_resamples"] = round(bootstrap_seconds(), 4)
    print(json.dumps({"args": vars(args), "means": summary}, indent=2))


if __name__ == "__main__":
    main()
