"""The GPU table of issue 10, in one run (bench/gpu.sh runs it; under 8 minutes on one H200).

1. The paper's CNN (5 conv layers) at 128 px over 34,116 synthetic images (the paper's rotated training set size):
   seconds per epoch and images/s, loader vs device pipeline, fp32 vs bf16 + channels_last.
2. Aggregate images/s of 1, 2, 4 and 8 such trials packed on one GPU (separate processes, as Ray runs them with
   resources.gpus_per_trial = 1/N), each on the device pipeline with bf16.
3. ResNet-50 at 224 px, frozen (ImageNet trunk fixed, head trains) and unfrozen, device pipeline, bf16.
Peak GPU memory of each (torch.cuda.max_memory_allocated, per process). The step is the loop's: no host read-back
inside an epoch. `--dry-run` runs the same code on CPU with tiny sizes (bf16 through CPU autocast).

    python bench/gpu_bench.py [--dry-run] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from leukotune.data import CellDataset, collate_batch
from leukotune.models import build_optimizer, get_model
from leukotune.tuner.train.pipeline import DeviceSplit, on_device

MEAN, STD = [0.55, 0.45, 0.6], [0.2, 0.2, 0.2]
PAPER_IMAGES = 34_116
CNN = {"conv_layers": 5, "kernel_size": 3, "base_filters": 16, "dense": 128, "dropout": 0.2}


@dataclass
class Sizes:
    cnn_images: int
    cnn_px: int
    batch: int
    resnet_images: int
    resnet_px: int
    resnet_batch: int
    packs: tuple[int, ...]
    pack_seconds: float
    warmup_steps: int  # before timing: cuDNN autotuning and allocator growth on a GPU


FULL = Sizes(PAPER_IMAGES, 128, 256, 8192, 224, 128, (1, 2, 4, 8), 20.0, 5)
DRY = Sizes(128, 64, 32, 8, 64, 4, (1, 2), 2.0, 1)


@dataclass
class Row:
    case: str
    pipeline: str
    precision: str
    images: int
    seconds_per_epoch: float
    images_per_second: float
    peak_memory_gib: float


def synthetic(count: int, px: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, 3, px, px), dtype=np.uint8), rng.integers(0, 2, size=count)


def batches_for(pipeline: str, images, labels, batch: int, device: torch.device, bf16: bool):
    indices = np.arange(len(labels))
    if pipeline == "loader":  # as tuner/train/loop.py builds it: one process, pinned memory on CUDA
        dataset = CellDataset(images, labels, indices, MEAN, STD, augment="rot90", seed=0)
        return DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, collate_fn=collate_batch,
                          pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0))
    dtype = torch.bfloat16 if bf16 else torch.float32
    return DeviceSplit(images, labels, indices, MEAN, STD, device, batch, augment="rot90", shuffle=True,
                       drop_last=True, dtype=dtype, channels_last=bf16)


def build(model_name: str, px: int, device: torch.device, bf16: bool, **kwargs):
    torch.manual_seed(0)
    model = get_model(model_name, image_size=px, **kwargs).to(device)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    return model, build_optimizer("adam", model.parameters(), lr=1e-4)


def epoch(model, optimizer, batches, device: torch.device, bf16: bool, max_steps: int | None = None) -> int:
    """One epoch (or max_steps) of the loop's step; the loss is summed on the device and read once."""
    model.train()
    loss_fn, seen = nn.CrossEntropyLoss(), 0
    total = torch.zeros((), device=device)
    context = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    for step, (x, y) in enumerate(on_device(batches, device)):
        if max_steps is not None and step >= max_steps:
            break
        if not bf16:  # the plain baseline: float32, NCHW (the loader's batches arrive channels_last on CUDA)
            x = x.float().contiguous()
        optimizer.zero_grad(set_to_none=True)
        with context:
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        optimizer.step()
        total += loss.detach()
        seen += len(y)
    total.item()  # waits for the device: the epoch's work is done when this returns
    return seen


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def timed_case(case: str, pipeline: str, bf16: bool, model_name: str, px: int, images, labels, batch: int,
               device: torch.device, warmup: int, **kwargs) -> Row:
    reset_peak(device)
    model, optimizer = build(model_name, px, device, bf16, **kwargs)
    batches = batches_for(pipeline, images, labels, batch, device, bf16)
    epoch(model, optimizer, batches, device, bf16, max_steps=warmup)
    start = time.perf_counter()
    seen = epoch(model, optimizer, batches, device, bf16)
    seconds = time.perf_counter() - start
    return Row(case, pipeline, "bf16+channels_last" if bf16 else "fp32", seen, seconds, seen / seconds,
               peak_gib(device))


def pack_worker(args: argparse.Namespace) -> None:
    """One packed trial: wait for the others (a file barrier), then train for pack_seconds; print a JSON line."""
    device, sizes = pick_device(args.dry_run), DRY if args.dry_run else FULL
    torch.set_num_threads(1)
    images, labels = synthetic(sizes.cnn_images, sizes.cnn_px, seed=args.worker)
    model, optimizer = build("cnn", sizes.cnn_px, device, True, **CNN)
    batches = batches_for("device", images, labels, sizes.batch, device, True)
    epoch(model, optimizer, batches, device, True, max_steps=sizes.warmup_steps)
    reset_peak(device)
    barrier = Path(args.barrier)
    (barrier / f"ready-{args.worker}").touch()
    while len(list(barrier.glob("ready-*"))) < args.pack:
        time.sleep(0.05)
    start, seen, number = time.perf_counter(), 0, 0
    while time.perf_counter() - start < sizes.pack_seconds:
        number += 1
        batches.set_epoch(number)
        seen += epoch(model, optimizer, batches, device, True)
    seconds = time.perf_counter() - start
    print(json.dumps({"images": seen, "seconds": seconds, "epochs": number, "peak_gib": peak_gib(device)}))


def packed(n: int, args: argparse.Namespace, sizes: Sizes) -> Row:
    with tempfile.TemporaryDirectory(prefix="leukotune-pack-") as barrier:
        command = [sys.executable, __file__, "--pack-worker", "--pack", str(n), "--barrier", barrier]
        command += ["--dry-run"] if args.dry_run else []
        procs = [subprocess.Popen([*command, "--worker", str(i)], stdout=subprocess.PIPE, text=True)
                 for i in range(n)]
        results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a packed worker failed: {[p.returncode for p in procs]}")
    images = sum(r["images"] for r in results)
    seconds = float(np.mean([r["seconds"] / r["epochs"] for r in results]))  # one trial's epoch, while packed
    return Row(f"cnn {sizes.cnn_px}px x{n} packed (aggregate)", "device", "bf16+channels_last", images, seconds,
               sum(r["images"] / r["seconds"] for r in results), max(r["peak_gib"] for r in results))


def pick_device(dry_run: bool) -> torch.device:
    if dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible; use --dry-run to run this on CPU")
    return torch.device("cuda")


def print_table(rows: list[Row], device: torch.device) -> None:
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (dry run: tiny sizes, not a measurement)"
    print(f"\ndevice: {name}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}\n")
    print("| case | pipeline | precision | images | s/epoch | images/s | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.case} | {r.pipeline} | {r.precision} | {r.images} | {r.seconds_per_epoch:.2f} | "
              f"{r.images_per_second:.0f} | {r.peak_memory_gib:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: shows the code works")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--pack-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pack", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--barrier", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pack_worker:
        pack_worker(args)
        return
    device, sizes = pick_device(args.dry_run), DRY if args.dry_run else FULL
    torch.backends.cudnn.benchmark = True
    if args.dry_run:
        torch.set_num_threads(1)  # as a trial on one CPU; more threads only fight on a small shared machine
    rows: list[Row] = []
    images, labels = synthetic(sizes.cnn_images, sizes.cnn_px)
    for pipeline in ("loader", "device"):
        for bf16 in (False, True):
            rows.append(timed_case(f"cnn {sizes.cnn_px}px", pipeline, bf16, "cnn", sizes.cnn_px, images, labels,
                                   sizes.batch, device, sizes.warmup_steps, **CNN))
            print(asdict(rows[-1]), flush=True)
    del images, labels
    for n in sizes.packs:
        rows.append(packed(n, args, sizes))
        print(asdict(rows[-1]), flush=True)
    images, labels = synthetic(sizes.resnet_images, sizes.resnet_px)
    for label, kwargs in (("frozen", {"freeze": True}), ("unfrozen", {"freeze": False})):
        rows.append(timed_case(f"resnet50 {sizes.resnet_px}px {label}", "device", True, "resnet50", sizes.resnet_px,
                               images, labels, sizes.resnet_batch, device, sizes.warmup_steps, weights=None,
                               **kwargs))
        print(asdict(rows[-1]), flush=True)
    print_table(rows, device)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
