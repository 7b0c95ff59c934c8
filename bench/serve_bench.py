"""Single-image requests: the champion on Ray Serve (with its batching) against a `leukotune predict`-style
predictor in one process, side by side in one run, on the same images and the same bounded load.

Both sides answer the same fixed list of requests (REQUESTS single-image requests cycling over the 60 real C-NMC
cells of ../shared/cnmc-sample, or synthetic cells when that folder is absent) from CLIENTS client threads, and
stop when the list is done. In-process: the registered model loaded as `leukotune predict` loads it
(`load_model`) and `predict_files` on one file per call, the threads sharing it. Ray Serve: `leukotune serve`'s own
code (`serve_control.start_serving`) on a private local Ray, one replica (one CPU), each request MLflow's JSON body
(`dataframe_split`, the image base64) POSTed to 127.0.0.1. Reported: requests/s, p50 and p99 latency, and the
ratios. The model is the paper's CNN (random weights: speed does not depend on them) at 256 px.

    .venv/bin/python bench/serve_bench.py [--requests 240] [--clients 4]
"""
from __future__ import annotations

import argparse
import base64
import json
import socket
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from leukotune.data import write_synthetic_dataset
from leukotune.models import get_model
from leukotune.tuner.evaluation.logged_models import load_model
from leukotune.tuner.evaluation.predict import predict_files
from leukotune.tuner.process import configure_process
from leukotune.tuner.registry.model_uris import process_tracking_uri
from leukotune.tuner.tracking.artifacts import log_pytorch_model
from leukotune.tuner.tracking.client import Tracker

CNMC_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "cnmc-sample"
MODEL_NAME = "serve-bench"
WARMUP = 8


def register_champion(folder: Path) -> tuple[str, str]:
    """A paper CNN logged as a study logs it, registered and aliased: (tracking URI, models:/NAME@champion)."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracker = Tracker(uri, "serve-bench", log=lambda _msg: None)
    run_id = tracker.create_run("bench", {})
    torch.manual_seed(0)
    kwargs = {"image_size": 256, "in_channels": 3}
    best = {"model": get_model("cnn", **kwargs).state_dict(), "model_name": "cnn", "model_kwargs": kwargs,
            "preprocessing": {"image_size": 256, "color": "rgb", "mean": [0.5] * 3, "std": [0.25] * 3},
            "epoch": 1, "metrics": {}}
    logged = log_pytorch_model(tracker, run_id, best)
    tracker.end_run(run_id, "FINISHED")
    client = tracker.client
    client.create_registered_model(MODEL_NAME)
    with process_tracking_uri(uri):
        version = client.create_model_version(MODEL_NAME, source=logged, run_id=run_id)
    client.set_registered_model_alias(MODEL_NAME, "champion", version.version)
    return uri, f"models:/{MODEL_NAME}@champion"


def cell_files(folder: Path) -> list[Path]:
    files = sorted((CNMC_SAMPLE / "training_data").rglob("*.bmp"))
    if files:
        return files
    write_synthetic_dataset(folder / "cells", subjects=6, cells_per_subject=10, size=450)
    return sorted((folder / "cells").rglob("*.bmp"))


def run_load(requests: list, answer, clients: int) -> dict[str, float]:
    """Every request answered by `answer` from `clients` threads; wall time and per-request latencies."""
    for item in requests[:WARMUP]:
        answer(item)
    latencies: list[float] = []
    lock = threading.Lock()

    def timed(item) -> None:
        started = time.perf_counter()
        answer(item)
        with lock:
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(timed, requests))
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"requests": len(requests), "seconds": round(wall, 2), "requests_per_s": round(len(requests) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def in_process(uri: str, model_uri: str, files: list[Path], clients: int) -> dict[str, float]:
    model = load_model(model_uri, uri)

    def answer(path: Path) -> None:
        rows = predict_files(model, [(path, None)])
        assert rows[0].error is None, rows[0].error

    return run_load(files, answer, clients)


def ray_serve(uri: str, model_uri: str, files: list[Path], clients: int) -> dict[str, float]:
    import ray
    from ray import serve

    from leukotune.tuner.serving.serve_control import ServeRequest, served_url, start_serving

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    request = ServeRequest(model_uri, uri, address="local", port=port, poll_s=3600.0)
    start_serving(request, log=lambda _line: None)
    url = f"{served_url(request)}/invocations"
    bodies = {p: json.dumps({"dataframe_split": {"columns": ["image"], "data": [
        [base64.b64encode(p.read_bytes()).decode("ascii")]]}}).encode() for p in set(files)}

    def answer(path: Path) -> None:
        sent = urllib.request.Request(url, data=bodies[path], headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(sent, timeout=300) as response:
            assert response.status == 200 and len(json.loads(response.read())["predictions"]) == 1

    try:
        return run_load(files, answer, clients)
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    configure_process("cli")
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        folder = Path(tmp)
        uri, model_uri = register_champion(folder)
        cells = cell_files(folder)
        requests = [cells[i % len(cells)] for i in range(args.requests)]
        results = {"in_process_predict": in_process(uri, model_uri, requests, args.clients),
                   "ray_serve_batched": ray_serve(uri, model_uri, requests, args.clients)}
    base, served = results["in_process_predict"], results["ray_serve_batched"]
    results["ratio_requests_per_s"] = round(served["requests_per_s"] / base["requests_per_s"], 2)
    results["ratio_p50"] = round(served["p50_ms"] / base["p50_ms"], 2)
    results["ratio_p99"] = round(served["p99_ms"] / base["p99_ms"], 2)
    results["setup"] = {"requests": args.requests, "clients": args.clients, "cells": len(cells),
                        "real_cells": CNMC_SAMPLE.is_dir(), "torch_threads": torch.get_num_threads()}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
