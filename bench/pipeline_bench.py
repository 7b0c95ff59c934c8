"""Input pipelines on CPU, side by side in one run: train.pipeline=device against train.pipeline=loader.

The same seeded CNN, the same uint8 images, the same batch size and rot90 augmentation; each epoch trains the model
through the loop's own train_one_epoch. Epochs alternate between the pipelines (which goes first swaps every
round) so that a noisy shared machine slows both alike. Reports, per epoch and as the median: images per wall-clock second, and images per CPU second of
this process (time.process_time; on a machine shared with other jobs, the figure that waiting does not distort).

    .venv/bin/python bench/pipeline_bench.py [--images 2048] [--size 64] [--batch 32] [--epochs 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from leukotune.data import CellDataset, collate_batch
from leukotune.models import build_optimizer, get_model
from leukotune.tuner.train.loop import train_one_epoch
from leukotune.tuner.train.pipeline import DeviceSplit

MEAN, STD = [0.55, 0.45, 0.6], [0.2, 0.2, 0.2]


def make_pipelines(images: np.ndarray, labels: np.ndarray, batch: int, device: torch.device) -> dict:
    indices = np.arange(len(labels))
    dataset = CellDataset(images, labels, indices, MEAN, STD, augment="rot90", seed=0)
    # As tuner/train/loop.py builds it: shuffled, drop_last, collate_batch, no worker processes.
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, collate_fn=collate_batch,
                        generator=torch.Generator().manual_seed(0), pin_memory=device.type == "cuda")
    split = DeviceSplit(images, labels, indices, MEAN, STD, device, batch, augment="rot90", shuffle=True,
                        drop_last=True, seed=0)
    return {"loader": loader, "device": split}


def run(args: argparse.Namespace, device: torch.device) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.images, 3, args.size, args.size), dtype=np.uint8)
    labels = rng.integers(0, 2, size=args.images)
    pipelines = make_pipelines(images, labels, args.batch, device)
    models = {}
    for name in pipelines:
        torch.manual_seed(0)
        model = get_model("cnn", conv_layers=args.conv_layers, kernel_size=3, base_filters=16, dense=64,
                          dropout=0.2, image_size=args.size).to(device)
        models[name] = (model, build_optimizer("adam", model.parameters(), lr=1e-3))
    loss_fn = nn.CrossEntropyLoss()
    wall: dict[str, list[float]] = {name: [] for name in pipelines}
    cpu: dict[str, list[float]] = {name: [] for name in pipelines}
    for epoch in range(1, args.epochs + 1):
        for name in sorted(pipelines, reverse=epoch % 2 == 0):
            batches = pipelines[name]
            if isinstance(batches, DeviceSplit):
                batches.set_epoch(epoch)
            model, optimizer = models[name]
            start = time.process_time()
            result = train_one_epoch(model, batches, optimizer, loss_fn, device)
            cpu[name].append(result["train_samples_per_second"] * result["train_seconds"] / (time.process_time() - start))
            wall[name].append(result["train_samples_per_second"])
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--conv-layers", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wall, cpu = run(args, torch.device("cpu"))
    print(f"CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, {args.threads} thread(s); "
          f"CNN {args.conv_layers} conv layers, {args.images} images of {args.size} px, batch {args.batch}, rot90")
    for title, rates in (("images per wall-clock second", wall), ("images per CPU second", cpu)):
        print(f"\n{title}\n\n| pipeline | " + " | ".join(f"epoch {i + 1}" for i in range(args.epochs)) + " | median |")
        print("|---|" + "---|" * (args.epochs + 1))
        for name, values in rates.items():
            print(f"| {name} | " + " | ".join(f"{v:.0f}" for v in values) + f" | {statistics.median(values):.0f} |")
        ratio = statistics.median(rates["device"]) / statistics.median(rates["loader"])
        print(f"\ndevice / loader ({title}): {ratio:.2f}x")


if __name__ == "__main__":
    main()
