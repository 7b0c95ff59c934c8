"""Batch prediction, side by side in one run: `leukotune predict` in one process (the table path) against
`leukotune predict --out` on Ray Data over this machine's cores, on the same synthetic cells with the same tiny
registered model; then the Ray run killed (SIGKILL) partway and run again on the same output, checking that no cell
is lost or counted twice and that the resumed table holds the uninterrupted run's numbers.

    .venv/bin/python bench/batch_predict_bench.py [--cells 20000] [--size 128] [--part-size 1000]

Both timings are the command's wall clock as a user sees it (imports, model download, and for Ray its start and
actors). Cells and the MLflow store go to a temp dir that is deleted.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from mlflow.tracking import MlflowClient

from leukotune.data import write_synthetic_dataset
from leukotune.models import get_model
from leukotune.tuner.process import configure_process
from leukotune.tuner.registry.model_uris import process_tracking_uri
from leukotune.tuner.tracking.artifacts import log_pytorch_model
from leukotune.tuner.tracking.client import Tracker

CELLS_PER_SUBJECT = 400


def register_model(uri: str) -> str:
    """A small CNN (3 conv layers, 64 px) logged as a study logs it, registered and aliased champion."""
    tracker = Tracker(uri, "batch-bench", log=lambda _msg: None)
    run_id = tracker.create_run("trial", {})
    torch.manual_seed(0)
    kwargs = {"conv_layers": 3, "base_filters": 16, "dense": 64, "image_size": 64, "in_channels": 3}
    best = {"model": get_model("cnn", **kwargs).state_dict(), "model_name": "cnn", "model_kwargs": kwargs,
            "preprocessing": {"image_size": 64, "color": "rgb", "mean": [0.5] * 3, "std": [0.25] * 3}, "epoch": 1,
            "metrics": {}}
    logged = log_pytorch_model(tracker, run_id, best)
    tracker.end_run(run_id, "FINISHED")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("bench")
    with process_tracking_uri(uri):
        version = client.create_model_version("bench", logged, run_id=run_id).version
    client.set_registered_model_alias("bench", "champion", version)
    return "models:/bench@champion"


def command(model: str, uri: str, cells: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "leukotune.tuner.cli", "predict", "--model", model, "--tracking-uri", uri, "--json",
            *extra, str(cells)]


def timed(args: list[str], env: dict[str, str]) -> tuple[float, dict]:
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=7200)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(args)}\n{result.stderr[-3000:]}")
    return seconds, json.loads(result.stdout)


def kill_after_parts(args: list[str], env: dict[str, str], parts: Path, wanted: int) -> int:
    """Start the run, SIGKILL it once `wanted` part files exist; the number of rows written by then."""
    run = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 3600
    while len(list(parts.glob("part-*.parquet"))) < wanted and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    if run.returncode != -signal.SIGKILL:
        sys.exit("the run ended before it could be killed: use more --cells or a smaller --part-size")
    return sum(pq.read_metadata(part).num_rows for part in parts.glob("part-*.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=128, help="side of the synthetic BMPs (C-NMC's are 450)")
    parser.add_argument("--part-size", type=int, default=1000)
    opts = parser.parse_args()
    configure_process("cli")  # MLflow's table-creation lines and download bars, as the command keeps them off
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    with tempfile.TemporaryDirectory(prefix="batch-predict-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        subjects = math.ceil(opts.cells / CELLS_PER_SUBJECT)
        write_synthetic_dataset(root / "cells", subjects=subjects, cells_per_subject=CELLS_PER_SUBJECT,
                                size=opts.size, seed=0)
        cells = root / "cells"
        total = len(list(cells.rglob("*.bmp")))
        print(f"{total} synthetic cells of {opts.size} px written in {time.perf_counter() - started:.0f} s")
        uri = f"sqlite:///{root / 'mlflow.db'}"
        model = register_model(uri)

        one_s, one = timed(command(model, uri, cells), env)
        assert one["classified"] == total, one["classified"]
        ray_s, ray_run = timed(command(model, uri, cells, "--out", str(root / "full.parquet"),
                                       "--part-size", str(opts.part_size)), env)
        assert ray_run["classified"] == total, ray_run
        full = {row["file"]: row for row in pq.read_table(root / "full.parquet").to_pylist()}
        one_p = {str(Path(r["file"]).absolute()): r["p_all"] for r in one["predictions"]}
        worst = max(abs(full[name]["p_all"] - p) for name, p in one_p.items())

        out = root / "resumed.parquet"
        written = kill_after_parts(command(model, uri, cells, "--out", str(out), "--part-size", str(opts.part_size)),
                                   env, out.with_name(out.name + ".parts"), wanted=max(1, total // opts.part_size // 3))
        resume_s, resumed = timed(command(model, uri, cells, "--out", str(out), "--part-size", str(opts.part_size)),
                                  env)
        rows = pq.read_table(out).to_pylist()
        files = [row["file"] for row in rows]
        lost = set(full) - set(files)
        twice = len(files) - len(set(files))
        differs = sum(row["class"] != full[row["file"]]["class"] or abs(row["p_all"] - full[row["file"]]["p_all"])
                      > 1e-6 for row in rows)

    cores = os.cpu_count()
    print(f"\n{platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f}")
    print("| path | wall s | images/s (wall) | images/s (predicting only) |")
    print("|---|---:|---:|---:|")
    print(f"| one process (`predict --json`) | {one_s:.1f} | {total / one_s:.0f} | - |")
    print(f"| Ray Data, {ray_run['actors']} {ray_run['device']} actors (`predict --out`) | {ray_s:.1f} | "
          f"{total / ray_s:.0f} | {ray_run['images_per_s']:.0f} (Ray start {ray_run['startup_s']:.1f} s) |")
    print(f"\nRay Data / one process, wall clock: {one_s / ray_s:.2f}x; largest |P(ALL) difference| {worst:.1e}")
    print(f"interrupted after {written} of {total} rows were written, resumed in {resume_s:.1f} s predicting "
          f"{resumed['predicted']} (skipped {resumed['skipped']}): {len(rows)} rows, {len(lost)} lost, {twice} "
          f"twice, {differs} differing from the uninterrupted run")
    if lost or twice or differs or resumed["skipped"] + resumed["predicted"] != total:
        sys.exit("the resumed output is wrong")


if __name__ == "__main__":
    main()
