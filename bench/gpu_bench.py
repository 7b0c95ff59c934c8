"""The GPU check (issue 20): what a study's trials run, timed on one CUDA GPU in at most five minutes.

Runs on the machine's own Python with torch, numpy and Pillow and nothing else: no Ray, MLflow, Optuna, pydantic or
PyYAML, and leukotune need not be installed (the `leukotune` import name is made from this working tree). Every
row is printed as it finishes and the JSON file is rewritten after each one, so a run cut off by its time limit
still leaves the rows it finished. Sections, most important first (a section that would overrun `--budget-s` is
skipped and says so):

1. The loop's own `train_one_epoch` (tuner/train/loop.py: RMSprop, class weights, device pipeline with rot90,
   bf16 + channels_last, its accounting) on the paper's CNN at 128 px over 34,116 images, at batch 16, 32, 64
   and 256, each beside a bare PyTorch step on the same data (pre-normalised, sliced, no accounting).
2. The same in float32 (NCHW) at batch 64.
3. ResNet-50 at 224 px, frozen and fine-tuned (all 16 blocks unfrozen), batch 64, and the loop's checkpoint
   write after such an epoch (state.pt alone, and with best.pt).
4. 1, 2, 4 and 8 packed trials (separate processes, batch 32), without CUDA MPS, then with it when the machine
   can start it (a private MPS daemon, stopped at the end; the GPU's settings are left as they are).
5. The DataLoader pipeline against the device pipeline, batch 64.
6. CUDA graphs (`train.compile: reduce-overhead`) at batch 32, then 16.

    python bench/gpu_bench.py [--dry-run] [--json out.json] [--budget-s 285]

`--dry-run` runs the same code on CPU with tiny sizes (no MPS, no compile): it shows the check works and measures
nothing. bench/gpu.sh wraps this with the machine's python3 and a hard time limit.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def use_tree_import_name() -> str:
    """Make `leukotune.data/models/tuner` importable: the installed package, or else this working tree.

    pyproject.toml installs the folders data/, models/ and tuner/ as `leukotune.<folder>`; a package named
    `leukotune` whose search path is the repository root resolves the same names to the same files.
    """
    try:
        import leukotune.tuner  # noqa: F401
        return "installed package"
    except ImportError:
        package = types.ModuleType("leukotune")
        package.__path__ = [str(ROOT)]
        sys.modules["leukotune"] = package
        return f"working tree {ROOT}"


LEUKOTUNE_FROM = use_tree_import_name()

from torch.utils.data import DataLoader  # noqa: E402

from leukotune.data import CellDataset, collate_batch  # noqa: E402
from leukotune.models import build_optimizer, get_model  # noqa: E402
from leukotune.tuner.train.checkpoints import BEST_FILE, STATE_FILE, CheckpointFolder, frozen_digest  # noqa: E402
from leukotune.tuner.train.folds import FoldModel  # noqa: E402
from leukotune.tuner.train.loop import (  # noqa: E402
    LoopState,
    class_weight_tensor,
    compile_model,
    configure_device,
    release_trial_state,
    train_one_epoch,
    write_epoch_checkpoint,
)
from leukotune.tuner.train.pipeline import DeviceSplit, set_epoch  # noqa: E402

MEAN, STD = [0.55, 0.45, 0.6], [0.2, 0.2, 0.2]
# The paper's CNN as studies/paper.yaml states it, and its optimiser.
CNN = {"conv_layers": 5, "kernel_size": 3, "base_filters": 16, "dense": 128, "dropout": 0.2}
OPTIMIZER, LR = "rmsprop", 1e-4
BLOCKED = ("ray", "mlflow", "optuna", "pydantic", "yaml")


@dataclass(frozen=True)
class Sizes:
    cnn_images: int  # images per CNN epoch (the paper's rotated training set: 34,116)
    distinct: int  # distinct random images behind them (content does not change the speed)
    cnn_px: int
    batches: tuple[int, ...]
    resnet_images: int
    resnet_px: int
    resnet_batch: int
    pack_images: int  # per packed trial
    packs: tuple[int, ...]
    pack_window_s: float
    pack_batch: int
    loader_batch: int
    compile_batches: tuple[int, ...]
    warmup_steps: int  # cuDNN's autotuning and the allocator's growth happen here, before any timing


FULL = Sizes(34_116, 4096, 128, (64, 32, 16, 256), 8192, 224, 64, 8192, (1, 2, 4, 8), 5.0, 32, 64, (32, 16), 15)
DRY = Sizes(288, 96, 64, (64, 32, 16, 256), 8, 64, 4, 64, (1, 2), 1.0, 16, 64, (), 1)


@dataclass
class Row:
    section: str
    case: str
    images: int = 0
    seconds: float = float("nan")  # of the timed epoch (or window)
    images_per_second: float = float("nan")
    peak_gib: float = float("nan")
    targets: list[dict[str, Any]] = field(default_factory=list)  # name, measured, target, ratio (>= 1: met)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def against(self, name: str, measured: float, target: float, at_least: bool) -> None:
        """Record a target; ratio >= 1 means met (measured/target for a floor, target/measured for a ceiling)."""
        ratio = measured / target if at_least else target / max(measured, 1e-12)
        self.targets.append({"name": name, "measured": measured, "target": target,
                             "bound": ">=" if at_least else "<=", "ratio": ratio, "met": ratio >= 1.0})


class Report:
    """The rows so far: printed one by one as they finish, and the JSON rewritten after each (a cut-off run
    leaves what it measured)."""

    def __init__(self, path: Path | None, meta: dict[str, Any]) -> None:
        self.path, self.meta, self.rows = path, meta, []
        self._write(complete=False)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        self._write(complete=False)  # first: a run cut off after the line below has the row on disk too
        print("row " + json.dumps(asdict(row)), flush=True)
        return row

    def finish(self) -> None:
        self._write(complete=True)

    def _write(self, complete: bool) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps({**self.meta, "complete": complete, "rows": [asdict(r) for r in self.rows]},
                                  indent=1))
        os.replace(tmp, self.path)


# ------------------------------------------------------------------------------------------------ measuring

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> int:
    """Start measuring a case's peak; returns what is allocated already (other cases' data), left out of it."""
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_gib(device: torch.device, base: int = 0) -> float:
    """The case's peak GPU memory (torch's allocations, this process), beyond `base`."""
    return (torch.cuda.max_memory_allocated(device) - base) / 2**30 if device.type == "cuda" else float("nan")


def synthetic(count: int, distinct: int, px: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`distinct` random uint8 images and labels, and `count` indices over them (repeats are fine for timing)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(distinct, 3, px, px), dtype=np.uint8)
    labels = (rng.random(distinct) < 0.67).astype(np.int64)  # C-NMC is about 2:1 ALL:hem
    return images, labels, np.arange(count) % distinct


def build(name: str, px: int, device: torch.device, channels_last: bool, **kwargs):
    """Model and optimiser as run_training makes them (seeded, so the loop and the bare step start equal)."""
    torch.manual_seed(0)
    model = get_model(name, image_size=px, **kwargs)
    digest = frozen_digest(model)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    return model, build_optimizer(OPTIMIZER, model.parameters(), lr=LR), digest


def layout(bf16: bool) -> dict[str, Any]:
    """DeviceSplit's batch format: its own default (bf16 + channels_last on CUDA, float32 on CPU), or float32 NCHW."""
    return {} if bf16 else {"dtype": torch.float32, "channels_last": False}


def device_split(images, labels, indices, device, batch, bf16: bool, seed: int = 0) -> DeviceSplit:
    """The training split as the loop builds it for train.pipeline=device (rot90, shuffled, last batch dropped)."""
    return DeviceSplit(images, labels, indices, MEAN, STD, device, batch, augment="rot90", shuffle=True,
                       drop_last=True, seed=seed, **layout(bf16))


def loop_epoch(model, optimizer, loss_fn, split, device, bf16: bool, warmup_split=None) -> tuple[int, float]:
    """Images and seconds of one epoch of the loop's own train_one_epoch (after a short warm-up epoch)."""
    if warmup_split is not None:
        train_one_epoch(model, warmup_split, optimizer, loss_fn, device, mixed_precision=bf16)
    set_epoch(split, 1)
    result = train_one_epoch(model, split, optimizer, loss_fn, device, mixed_precision=bf16)
    seconds = result["train_seconds"]
    return round(result["train_samples_per_second"] * seconds), seconds


def bare_epoch(model, optimizer, loss_fn, x_all, y_all, batch, device, bf16: bool, warmup: int) -> tuple[int, float]:
    """The least a step can be: batches sliced from a pre-normalised device tensor, no augmentation, no accounting."""
    model.train()
    steps = len(x_all) // batch
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")

    def run(count: int) -> None:
        for step in range(count):
            x, y = x_all[step * batch:(step + 1) * batch], y_all[step * batch:(step + 1) * batch]
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = loss_fn(model(x).float(), y)
            loss.backward()
            optimizer.step()

    run(min(warmup, steps))
    sync(device)
    start = time.perf_counter()
    run(steps)
    sync(device)
    return steps * batch, time.perf_counter() - start


def normalised(images, labels, indices, device, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split normalised on the device once, for the bare step (built from the device split's batches)."""
    split = DeviceSplit(images, labels, indices, MEAN, STD, device, 4096, **layout(bf16))
    xs, ys = zip(*split)
    channels_last = bf16 and device.type == "cuda"
    x_all = torch.cat(xs).contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return x_all, torch.cat(ys)


# ------------------------------------------------------------------------------------------------ sections

@dataclass
class Context:
    args: argparse.Namespace
    sizes: Sizes
    device: torch.device
    report: Report
    deadline: float
    data: dict[str, Any] = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def cnn_data(ctx: Context):
    if "cnn" not in ctx.data:
        s = ctx.sizes
        ctx.data["cnn"] = synthetic(s.cnn_images, s.distinct, s.cnn_px)
    return ctx.data["cnn"]


def cnn_loss(ctx: Context, labels) -> nn.Module:
    # studies/paper.yaml trains with class weights
    return nn.CrossEntropyLoss(weight=class_weight_tensor(labels, ctx.device))


def section_loop_vs_bare(ctx: Context, batches: tuple[int, ...], bf16: bool) -> None:
    s, device = ctx.sizes, ctx.device
    images, labels, indices = cnn_data(ctx)
    precision = "bf16+channels_last" if bf16 else "fp32 NCHW"
    loss_fn = cnn_loss(ctx, labels[indices])
    x_all, y_all = normalised(images, labels, indices, device, bf16)
    for batch in batches:
        base = reset_peak(device)
        model, optimizer, _ = build("cnn", s.cnn_px, device, bf16 and device.type == "cuda", **CNN)
        split = device_split(images, labels, indices, device, batch, bf16)
        warm = device_split(images, labels, indices[:batch * s.warmup_steps], device, batch, bf16)
        seen, seconds = loop_epoch(model, optimizer, loss_fn, split, device, bf16, warm)
        loop_row = Row("cnn", f"cnn {s.cnn_px}px b{batch} loop {precision}", seen, seconds, seen / seconds,
                       peak_gib(device, base))
        del model, optimizer, split, warm
        base = reset_peak(device)
        model, optimizer, _ = build("cnn", s.cnn_px, device, bf16 and device.type == "cuda", **CNN)
        bare_seen, bare_seconds = bare_epoch(model, optimizer, loss_fn, x_all, y_all, batch, device, bf16,
                                             s.warmup_steps)
        bare_row = Row("cnn", f"cnn {s.cnn_px}px b{batch} bare step {precision}", bare_seen, bare_seconds,
                       bare_seen / bare_seconds, peak_gib(device, base))
        del model, optimizer
        loop_row.extra["bare_images_per_second"] = bare_row.images_per_second
        if bf16:
            loop_row.against("loop / bare step", loop_row.images_per_second / bare_row.images_per_second, 0.9, True)
            if batch == 64:
                epoch = s.cnn_images / loop_row.images_per_second
                loop_row.against(f"epoch of {s.cnn_images} images, s", epoch, 1.0, False)
        ctx.report.add(loop_row)
        ctx.report.add(bare_row)
    del x_all, y_all


def section_resnet(ctx: Context) -> None:
    s, device = ctx.sizes, ctx.device
    images, labels, indices = synthetic(s.resnet_images, min(s.resnet_images, 1024), s.resnet_px, seed=1)
    loss_fn = nn.CrossEntropyLoss()
    for label, kwargs in (("frozen", {}), ("fine-tuned", {"unfreeze": 16})):
        base = reset_peak(device)
        model, optimizer, digest = build("resnet50", s.resnet_px, device, device.type == "cuda", weights=None,
                                         **kwargs)
        split = device_split(images, labels, indices, device, s.resnet_batch, True)
        warm = device_split(images, labels, indices[:s.resnet_batch * s.warmup_steps], device, s.resnet_batch,
                            True)
        seen, seconds = loop_epoch(model, optimizer, loss_fn, split, device, True, warm)
        row = Row("resnet50", f"resnet50 {s.resnet_px}px {label} b{s.resnet_batch} loop bf16+channels_last", seen,
                  seconds, seen / seconds, peak_gib(device, base))
        if label == "frozen":
            row.against("images/s", row.images_per_second, 5000.0, True)
        ctx.report.add(row)
        ctx.report.add(checkpoint_row(ctx, model, optimizer, digest, label, seconds))
        del model, optimizer, split, warm


def checkpoint_row(ctx: Context, model, optimizer, digest, label: str, epoch_seconds: float) -> Row:
    """The loop's own checkpoint write after an epoch: state.pt alone (no better epoch), then with best.pt."""
    with tempfile.TemporaryDirectory(prefix="leukotune-gpu-ckpt-") as tmp:
        folder = CheckpointFolder(Path(tmp))
        meta = {"model_name": "resnet50", "model_kwargs": {}, "preprocessing": {}, "config": {}, "epoch": 1,
                "metrics": {}}
        trial = [FoldModel(model, optimizer, loss_fn=nn.Identity(), train_batches=None, val_batches=None,
                           train_samples=0, val_samples=0, frozen_digest=digest)]
        with_best = write_epoch_checkpoint(folder, trial, LoopState(epoch=1), [], digest, meta)
        state_only = write_epoch_checkpoint(folder, trial, LoopState(epoch=2), [], digest, None)
        sizes = {name: (Path(tmp) / name).stat().st_size / 2**20 for name in (STATE_FILE, BEST_FILE)}
    row = Row("checkpoint", f"resnet50 {label} checkpoint (state.pt {sizes[STATE_FILE]:.1f} MiB, "
              f"best.pt {sizes[BEST_FILE]:.1f} MiB)", seconds=state_only)
    row.extra = {"state_only_s": state_only, "state_and_best_s": with_best, "epoch_s": epoch_seconds,
                 "state_mib": sizes[STATE_FILE], "best_mib": sizes[BEST_FILE]}
    row.note = (f"state.pt alone {state_only:.2f} s, with best.pt {with_best:.2f} s; "
                f"{state_only / epoch_seconds:.2f}x and {with_best / epoch_seconds:.2f}x of this epoch")
    return row


def section_loader(ctx: Context) -> None:
    s, device = ctx.sizes, ctx.device
    images, labels, indices = cnn_data(ctx)
    batch = s.loader_batch
    base = reset_peak(device)
    model, optimizer, _ = build("cnn", s.cnn_px, device, device.type == "cuda", **CNN)
    # As tuner/train/loop.py builds it: one process, pinned memory on CUDA, batches converted on the device.
    dataset = CellDataset(images, labels, indices, MEAN, STD, augment="rot90", seed=0)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, collate_fn=collate_batch,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0))
    warm = device_split(images, labels, indices[:batch * s.warmup_steps], device, batch, True)
    seen, seconds = loop_epoch(model, optimizer, cnn_loss(ctx, labels[indices]), loader, device, True, warm)
    row = Row("pipeline", f"cnn {s.cnn_px}px b{batch} loop, DataLoader pipeline", seen, seconds, seen / seconds,
              peak_gib(device, base))
    device_row = next((r for r in ctx.report.rows if r.case == f"cnn {s.cnn_px}px b{batch} loop bf16+channels_last"),
                      None)
    if device_row is not None:
        row.note = f"device pipeline / DataLoader: {device_row.images_per_second / row.images_per_second:.2f}x"
    ctx.report.add(row)


def section_compile(ctx: Context) -> None:
    s, device = ctx.sizes, ctx.device
    images, labels, indices = cnn_data(ctx)
    loss_fn = cnn_loss(ctx, labels[indices])
    for batch in s.compile_batches:
        if ctx.left() < 90:
            ctx.report.add(Row("compile", f"cnn b{batch} reduce-overhead", note="skipped: time budget"))
            continue
        base = reset_peak(device)
        model, optimizer, _ = build("cnn", s.cnn_px, device, True, **CNN)
        model = compile_model(model, "reduce-overhead")
        split = device_split(images, labels, indices, device, batch, True)
        warm = device_split(images, labels, indices[:batch * s.warmup_steps], device, batch, True)
        start = time.perf_counter()
        train_one_epoch(model, warm, optimizer, loss_fn, device)  # compiles, records the CUDA graphs
        compile_s = time.perf_counter() - start
        seen, seconds = loop_epoch(model, optimizer, loss_fn, split, device, True)
        row = Row("compile", f"cnn {s.cnn_px}px b{batch} loop, CUDA graphs (train.compile=reduce-overhead)", seen,
                  seconds, seen / seconds, peak_gib(device, base), extra={"compile_s": compile_s})
        row.against(f"epoch of {s.cnn_images} images, s", s.cnn_images / row.images_per_second, 1.0, False)
        eager = next((r for r in ctx.report.rows if r.case == f"cnn {s.cnn_px}px b{batch} loop bf16+channels_last"),
                     None)
        row.note = f"compiling took {compile_s:.0f} s" + (
            f"; {row.images_per_second / eager.images_per_second:.2f}x the eager loop" if eager else "")
        ctx.report.add(row)
        del model, optimizer, split, warm
        release_trial_state(device, "reduce-overhead")  # as at a trial's end


# ------------------------------------------------------------------------------------------------ packing

def pack_worker(args: argparse.Namespace) -> None:
    """One packed trial in its own process: set up, say ready, then run an epoch loop in each window it is in."""
    sizes, device = (DRY if args.dry_run else FULL), pick_device(args.dry_run)
    torch.set_num_threads(1)
    configure_device(device)
    control = Path(args.control)
    images, labels, indices = synthetic(sizes.pack_images, min(sizes.pack_images, 1024), sizes.cnn_px,
                                        seed=10 + args.worker)
    model, optimizer, _ = build("cnn", sizes.cnn_px, device, device.type == "cuda", **CNN)
    loss_fn = nn.CrossEntropyLoss(weight=class_weight_tensor(labels[indices], device))
    split = device_split(images, labels, indices, device, sizes.pack_batch, True, seed=args.worker)
    train_one_epoch(model, split, optimizer, loss_fn, device)  # warm-up: cuDNN's choices, the allocator
    reset_peak(device)  # the whole trial counts: its data and model stay in the peak
    (control / f"ready-{args.worker}").touch()
    done: set[str] = set()
    while not (control / "stop").exists():
        go = next((p for p in sorted(control.glob("go-*")) if p.name not in done), None)
        if go is None:
            time.sleep(0.005)
            continue
        done.add(go.name)
        n = int(go.name.split("-")[1])
        if args.worker >= n:
            continue
        start, seen, epochs = time.perf_counter(), 0, 0
        while time.perf_counter() - start < sizes.pack_window_s:
            epochs += 1
            split.set_epoch(epochs)
            result = train_one_epoch(model, split, optimizer, loss_fn, device)
            seen += round(result["train_samples_per_second"] * result["train_seconds"])
        seconds = time.perf_counter() - start
        out = control / f"result-{n}-{args.worker}.json"
        out.with_suffix(".tmp").write_text(json.dumps(
            {"images": seen, "seconds": seconds, "epochs": epochs, "peak_gib": peak_gib(device)}))
        os.replace(out.with_suffix(".tmp"), out)  # whole when the coordinator sees it


class MpsDaemon:
    """A private CUDA MPS control daemon (own pipe and log folders): only processes given its environment use it,
    and it is told to quit at the end. Starting it changes no setting of the GPU."""

    def __init__(self, root: Path) -> None:
        self.env = {"CUDA_MPS_PIPE_DIRECTORY": str(root / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(root / "log")}
        self.started = False

    def start(self) -> str | None:
        """None when it runs, else why not."""
        control = shutil.which("nvidia-cuda-mps-control")
        if control is None:
            return "nvidia-cuda-mps-control is not on PATH"
        for folder in self.env.values():
            Path(folder).mkdir(parents=True, exist_ok=True)
        done = subprocess.run([control, "-d"], env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=30, check=False)
        if done.returncode != 0:
            return f"nvidia-cuda-mps-control -d failed ({done.returncode}): {(done.stderr or done.stdout).strip()}"
        self.started = True
        return None

    def ask(self, command: str) -> str:
        done = subprocess.run(["nvidia-cuda-mps-control"], input=command + "\n", env={**os.environ, **self.env},
                              capture_output=True, text=True, timeout=30, check=False)
        return done.stdout.strip()

    def stop(self) -> None:
        if self.started:
            self.ask("quit")
            self.started = False


def section_packing(ctx: Context, mps: bool) -> None:
    s, label = ctx.sizes, "with MPS" if mps else "without MPS"
    packs = s.packs
    with tempfile.TemporaryDirectory(prefix="leukotune-pack-") as tmp:
        daemon = MpsDaemon(Path(tmp) / "mps")
        env = dict(os.environ)
        if mps:
            reason = daemon.start() if ctx.device.type == "cuda" else "no CUDA device (dry run)"
            if reason is not None:
                ctx.report.add(Row("packing", f"packed trials {label}", note=f"skipped: {reason}"))
                return
            env.update(daemon.env)
        control = Path(tmp) / "control"
        control.mkdir()
        command = [sys.executable, __file__, "--pack-worker", "--control", str(control)]
        command += ["--dry-run"] if ctx.args.dry_run else []
        procs = [subprocess.Popen([*command, "--worker", str(i)], env=env) for i in range(max(packs))]
        try:
            wait_for(lambda: len(list(control.glob("ready-*"))) == len(procs) or any(p.poll() for p in procs),
                     limit_s=120)
            if any(p.poll() is not None for p in procs) or len(list(control.glob("ready-*"))) < len(procs):
                ctx.report.add(Row("packing", f"packed trials {label}",
                                   note=f"workers failed to start: {[p.poll() for p in procs]}"))
                return
            server = daemon.ask("get_server_list") if mps else ""
            for n in packs:
                (control / f"go-{n}").touch()
                wait_for(lambda: len(list(control.glob(f"result-{n}-*.json"))) == n or any(p.poll() for p in procs),
                         limit_s=s.pack_window_s * 4 + 60)
                results = [json.loads(p.read_text()) for p in sorted(control.glob(f"result-{n}-*.json"))]
                ctx.report.add(packed_row(ctx, n, label, results, mps_server=server))
        finally:
            (control / "stop").touch()
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            daemon.stop()


def packed_row(ctx: Context, n: int, label: str, results: list[dict], mps_server: str) -> Row:
    s = ctx.sizes
    if len(results) < n:
        return Row("packing", f"cnn b{s.pack_batch} x{n} packed {label}", note="a worker failed")
    rate = sum(r["images"] / r["seconds"] for r in results)
    row = Row("packing", f"cnn {s.cnn_px}px b{s.pack_batch} x{n} packed {label} (aggregate)",
              sum(r["images"] for r in results), float(np.mean([r["seconds"] / r["epochs"] for r in results])), rate,
              max(r["peak_gib"] for r in results))
    row.extra = {"per_trial_images_per_second": [r["images"] / r["seconds"] for r in results]}
    if label == "with MPS":
        row.extra["mps_servers"] = mps_server
    one = next((r for r in ctx.report.rows if r.case == f"cnn {s.cnn_px}px b{s.pack_batch} x1 packed without MPS "
                "(aggregate)"), None)
    if one is not None and n > 1:
        row.note = f"{rate / one.images_per_second:.2f}x one trial alone"
        if n == 4 and label == "with MPS":
            row.against("x one trial's images/s", rate / one.images_per_second, 2.5, True)
    return row


def wait_for(condition: Callable[[], bool], limit_s: float) -> None:
    deadline = time.perf_counter() + limit_s
    while not condition() and time.perf_counter() < deadline:
        time.sleep(0.02)


# ------------------------------------------------------------------------------------------------ main

def pick_device(dry_run: bool) -> torch.device:
    if dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible; use --dry-run to run this on CPU")
    return torch.device("cuda")


def describe(device: torch.device) -> dict[str, Any]:
    present = [name for name in BLOCKED if _importable(name)]
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)",
            "torch": torch.__version__, "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d %H:%M"),
            "leukotune_from": LEUKOTUNE_FROM, "present_of_ray_mlflow_optuna_pydantic_yaml": present}


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def print_table(report: Report) -> None:
    meta = report.meta
    print(f"\ndevice: {meta['device']}; torch {meta['torch']}; python {meta['python']}; {meta['date']}\n")
    print("| case | images | s | images/s | peak GiB | against target | note |")
    print("|---|---:|---:|---:|---:|---|---|")
    for r in report.rows:
        targets = "; ".join(f"{t['name']} {t['measured']:.2f} ({t['bound']} {t['target']:g}): "
                            f"{t['ratio']:.2f}x {'met' if t['met'] else 'MISSED'}" for t in r.targets)
        print(f"| {r.case} | {r.images} | {r.seconds:.2f} | {r.images_per_second:.0f} | {r.peak_gib:.2f} | "
              f"{targets or '-'} | {r.note} |")


def run_sections(ctx: Context) -> None:
    s = ctx.sizes
    sections: list[tuple[str, float, Callable[[], None]]] = [
        ("loop vs bare step, bf16", 5, lambda: section_loop_vs_bare(ctx, s.batches, bf16=True)),
        ("loop vs bare step, fp32", 5, lambda: section_loop_vs_bare(ctx, (64,), bf16=False)),
        ("resnet50", 20, lambda: section_resnet(ctx)),
        ("packing without MPS", 35, lambda: section_packing(ctx, mps=False)),
        ("packing with MPS", 35, lambda: section_packing(ctx, mps=True)),
        ("DataLoader pipeline", 15, lambda: section_loader(ctx)),
        ("CUDA graphs", 90, lambda: section_compile(ctx)),
    ]
    for name, needs_s, run in sections:
        if name == "CUDA graphs" and ctx.args.dry_run:
            ctx.report.add(Row("compile", "CUDA graphs (train.compile=reduce-overhead)",
                               note="skipped in the dry run: inductor on a CPU takes minutes, and CUDA graphs "
                                    "need a GPU"))
            continue
        if ctx.left() < needs_s and not ctx.args.dry_run:
            ctx.report.add(Row(name, name, note=f"skipped: {ctx.left():.0f} s of the time budget left"))
            continue
        print(f"== {name} ({ctx.left():.0f} s of the budget left)", flush=True)
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - one failing section must not cost the others their rows
            traceback.print_exc()
            ctx.report.add(Row(name, name, note=f"failed: {type(exc).__name__}: {exc}"[:500]))
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: shows the code works")
    parser.add_argument("--json", type=Path, help="rewrite the rows here after each one")
    parser.add_argument("--budget-s", type=float, default=285.0,
                        help="sections that would start later than this are skipped (default 285)")
    parser.add_argument("--pack-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--control", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pack_worker:
        pack_worker(args)
        return
    # `timeout` (bench/gpu.sh) sends SIGTERM: unwind, so the packed workers and an MPS daemon are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    begin = time.perf_counter()
    device = pick_device(args.dry_run)
    sizes = DRY if args.dry_run else FULL
    configure_device(device)  # cudnn.benchmark, as the loop sets it
    if args.dry_run:
        torch.set_num_threads(1)  # as a trial on one CPU; more threads only fight on a small shared machine
    report = Report(args.json, describe(device))
    print(f"leukotune from the {LEUKOTUNE_FROM}; {report.meta['device']}; torch {torch.__version__}", flush=True)
    ctx = Context(args, sizes, device, report, begin + args.budget_s)
    try:
        run_sections(ctx)
    finally:
        print_table(report)
    report.finish()
    print(f"\nthe check took {time.perf_counter() - begin:.0f} s", flush=True)
    failed = [r.case for r in report.rows if r.note.startswith("failed:")]
    if failed:
        sys.exit(f"failed sections: {', '.join(failed)}")


if __name__ == "__main__":
    main()
