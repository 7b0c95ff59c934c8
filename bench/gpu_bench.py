"""GPU training throughput: fp32 against bf16 autocast + channels_last, for the CNN at 128 px and ResNet-50 at 224 px.

Random tensors already on the GPU, so this measures the model step the trial loop runs, not the loader.
    python bench/gpu_bench.py [--steps 60] [--batch 128]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from leukotune.models import build_optimizer, get_model  # noqa: E402

CASES = [("cnn", 128, {"conv_layers": 5, "kernel_size": 3}), ("resnet50", 224, {"unfreeze": 16, "freeze": True})]


def images_per_second(name: str, size: int, kwargs: dict, batch: int, steps: int, fast: bool) -> float:
    device = torch.device("cuda")
    model = get_model(name, image_size=size, **kwargs).to(device)
    fmt = torch.channels_last if fast else torch.contiguous_format
    model = model.to(memory_format=fmt)
    optimizer = build_optimizer("rmsprop", model.parameters(), lr=1e-4)
    images = torch.randn(batch, 3, size, size, device=device).to(memory_format=fmt)
    labels = torch.randint(0, 2, (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()
    context = torch.autocast("cuda", dtype=torch.bfloat16) if fast else nullcontext()
    for step in range(steps + 10):  # 10 warm-up steps: cuDNN autotuning and allocator growth
        if step == 10:
            torch.cuda.synchronize()
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with context:
            loss = loss_fn(model(images).float(), labels)
        loss.backward()
        optimizer.step()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    rows = []
    print(f"device: {torch.cuda.get_device_name(0)}\n\n| model | px | fp32 img/s | bf16+channels_last img/s | speed-up |")
    print("|---|---|---|---|---|")
    for name, size, kwargs in CASES:
        fp32 = images_per_second(name, size, kwargs, args.batch, args.steps, fast=False)
        bf16 = images_per_second(name, size, kwargs, args.batch, args.steps, fast=True)
        rows.append({"model": name, "size": size, "fp32": fp32, "bf16_channels_last": bf16})
        print(f"| {name} | {size} | {fp32:.0f} | {bf16:.0f} | {bf16 / fp32:.2f}x |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
