"""Data loader throughput, side by side in one run: leukotune's decoded cache + CellDataset against torchvision's
ImageFolder decoding every BMP with PIL every epoch. One core, no workers, batch 64, 128 px, random rot90 in both.

    .venv/bin/python bench/loader_bench.py [--subjects 12] [--cells-per-subject 170] [--size 128] [--epochs 2]

Our epoch 1 includes indexing the folder and building the cache. Data is written to a temp dir and deleted.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from leukotune.data import (
    CellDataset,
    channel_stats,
    collate_batch,
    load_cached_images,
    load_manifest,
    write_synthetic_dataset,
)

BATCH = 64


def timed_epochs(make_batches: Callable[[int], Iterable], epochs: int) -> list[tuple[float, int]]:
    """(seconds, images) per epoch; make_batches(epoch) may do set-up work, which is then timed too."""
    results = []
    for epoch in range(epochs):
        start, seen = time.perf_counter(), 0
        for x, y in make_batches(epoch):
            seen += len(y)
        results.append((time.perf_counter() - start, seen))
    return results


def ours(root: Path, cache_dir: Path, size: int, epochs: int,
         collate_fn: Callable | None = None) -> tuple[list[tuple[float, int]], tuple]:
    """Cache + CellDataset + DataLoader; the cache is built (in an empty `cache_dir`) inside epoch 1's clock."""
    state: dict = {}

    def batches(epoch: int) -> Iterable:
        if epoch == 0:
            cached = load_cached_images(load_manifest(root).records, size, "rgb", cache_dir)
            state["stats"] = channel_stats(cached.images, range(len(cached.kept)))
            dataset = CellDataset(cached.images, cached.labels, range(len(cached.kept)), *state["stats"],
                                  augment="rot90")
            state["loader"] = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0,
                                         collate_fn=collate_fn)
        return state["loader"]

    return timed_epochs(batches, epochs), state["stats"]


def random_rot90(x: torch.Tensor) -> torch.Tensor:
    return torch.rot90(x, int(torch.randint(4, ())), dims=(1, 2))


def image_folder(root: Path, link_dir: Path, size: int, stats: tuple, epochs: int) -> list[tuple[float, int]]:
    """torchvision ImageFolder over a symlink tree {all,hem}/ of every fold, decoding with PIL each epoch."""
    for path in root.glob("training_data/fold_*/*/*.bmp"):
        target = link_dir / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path)
    transform = transforms.Compose([
        transforms.Resize(size), transforms.ToTensor(), transforms.Lambda(random_rot90),
        transforms.Normalize(*stats),
    ])
    loader = DataLoader(datasets.ImageFolder(str(link_dir), transform=transform), batch_size=BATCH, shuffle=True,
                        num_workers=0)
    return timed_epochs(lambda epoch: loader, epochs)


def report(rows: dict[str, list[tuple[float, int]]]) -> str:
    """Markdown table of imgs/s per epoch, and the speed-up of the first row over the last in the last epoch."""
    epochs = len(next(iter(rows.values())))
    lines = ["| loader | " + " | ".join(f"epoch {e + 1} imgs/s" for e in range(epochs)) + " |",
             "|---|" + "---:|" * epochs]
    rates = {name: [n / s for s, n in runs] for name, runs in rows.items()}
    for name, values in rates.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:,.0f}" for v in values) + " |")
    ours_rate, theirs_rate = list(rates.values())[0][-1], list(rates.values())[-1][-1]
    lines.append(f"\nepoch-{epochs} ratio (leukotune / ImageFolder): {ours_rate / theirs_rate:.1f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--cells-per-subject", type=int, default=170)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="leukotune-loader-bench-") as tmp:
        root = Path(tmp) / "cnmc"
        start = time.perf_counter()
        summary = write_synthetic_dataset(root, subjects=args.subjects, cells_per_subject=args.cells_per_subject)
        print(f"synthetic set: {summary['cells']} cells, 450x450 BMP, written in {time.perf_counter() - start:.1f}s")
        ours_runs, stats = ours(root, Path(tmp) / "cache", args.size, args.epochs)
        no_restack_runs, _ = ours(root, Path(tmp) / "cache2", args.size, args.epochs, collate_batch)
        theirs_runs = image_folder(root, Path(tmp) / "imagefolder", args.size, stats, args.epochs)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, torch threads 1, "
          f"num_workers 0, batch {BATCH}, {args.size} px, torch {torch.__version__}\n")
    print(report({"leukotune: cache + CellDataset, default collate": ours_runs,
                  "leukotune: same, collate_fn=collate_batch": no_restack_runs,
                  "torchvision ImageFolder + PIL": theirs_runs}))


if __name__ == "__main__":
    main()
