"""The one training loop: used by `leukotune train` (Ray Train workers) and by every Tune trial.

Where it runs is hidden behind a small `Session` (see tuner/sessions.py): the loop asks it for the device, the
checkpoint to resume from, and where to report each epoch. That keeps this file free of Ray and testable alone.
"""
from __future__ import annotations

import math
import random
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from leukotune.data import CellDataset, channel_stats, collate_batch, prepare_data
from leukotune.models import build_optimizer, get_model, get_model_spec
from leukotune.tuner.config import StudyConfig, model_kwargs
from leukotune.tuner.metrics import classification_metrics, is_better
from leukotune.tuner.train.checkpoints import (
    BEST_FILE,
    STATE_FILE,
    CheckpointError,
    read_checkpoint_file,
    write_checkpoint,
)
from leukotune.tuner.train.data_source import resolve_data_root


class Session(Protocol):
    """Where the loop runs: local process, a Tune trial actor, or a Ray Train worker."""

    world_rank: int
    world_size: int

    def device(self) -> torch.device: ...
    def prepare_model(self, model: nn.Module) -> nn.Module: ...
    def prepare_loader(self, loader: DataLoader) -> DataLoader: ...
    def restore_dir(self) -> Any: ...  # context manager yielding a Path or None
    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None: ...


@dataclass
class LoopState:
    epoch: int = 0  # epochs completed
    best_value: float | None = None
    best_epoch: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def preprocessing_facts(study: StudyConfig, images: np.ndarray, train_idx: np.ndarray) -> dict[str, Any]:
    """Size, colour and mean/std the model sees: the model's own stats, else the train split's (never val's)."""
    channels = 1 if study.train.color == "gray" else 3
    stats = get_model_spec(study.train.model).normalization(channels)
    if stats is not None:
        mean, std = list(stats[0]), list(stats[1])
    else:
        mean, std = (list(map(float, v)) for v in channel_stats(images, train_idx))
    return {"image_size": study.train.image_size, "color": study.train.color, "mean": mean, "std": std}


def build_loaders(study: StudyConfig, data, prep: dict[str, Any], session: Session) -> tuple[DataLoader, DataLoader]:
    train = study.train
    common = dict(mean=prep["mean"], std=prep["std"])
    train_ds = CellDataset(data.images, data.labels, data.train_idx, augment=train.augment,
                           materialize=train.augment_mode == "materialize", seed=train.seed, **common)
    val_ds = CellDataset(data.images, data.labels, data.val_idx, **common)  # never augmented
    pin = session.device().type == "cuda"
    generator = torch.Generator().manual_seed(train.seed)
    train_loader = DataLoader(train_ds, batch_size=train.batch_size, shuffle=True, generator=generator,
                              pin_memory=pin, drop_last=len(train_ds) > train.batch_size,
                              collate_fn=collate_batch)
    val_loader = DataLoader(val_ds, batch_size=max(train.batch_size, 64), shuffle=False, pin_memory=pin,
                            collate_fn=collate_batch)
    return session.prepare_loader(train_loader), val_loader


def class_weight_tensor(labels: np.ndarray, device: torch.device) -> torch.Tensor:
    """Inverse-frequency weights: C-NMC is about 2:1 ALL:hem, so hem errors would otherwise count half."""
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    weights = counts.sum() / (2.0 * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32, device=device)


def autocast_for(device: torch.device):
    # bf16 on GPU only: on CPU autocast slows the small CNN down and changes nothing useful.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer, loss_fn, device: torch.device) -> dict[str, float]:
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    for images, labels in loader:
        images = images.to(device, non_blocking=True, memory_format=_memory_format(device))
        labels = labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(device):
            logits = model(images)
            loss = loss_fn(logits.float(), labels)
        loss.backward()
        optimizer.step()
        total_loss += float(loss.detach()) * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
    seconds = time.perf_counter() - start
    return {"train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1),
            "train_seconds": seconds, "train_samples_per_second": seen / max(seconds, 1e-9)}


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, loss_fn, device: torch.device) -> dict[str, float]:
    model.eval()
    start = time.perf_counter()
    probs, labels_all, total_loss = [], [], 0.0
    for images, labels in loader:
        images = images.to(device, non_blocking=True, memory_format=_memory_format(device))
        labels = labels.to(device, non_blocking=True)
        with autocast_for(device):
            logits = model(images).float()
        total_loss += float(loss_fn(logits, labels)) * len(labels)
        probs.append(torch.softmax(logits, dim=1)[:, 1].cpu().numpy())
        labels_all.append(labels.cpu().numpy())
    y_true, prob_all = np.concatenate(labels_all), np.concatenate(probs)
    metrics = {f"val_{k}": v for k, v in classification_metrics(y_true, prob_all).items()}
    metrics["val_loss"] = total_loss / max(len(y_true), 1)
    metrics["val_seconds"] = time.perf_counter() - start
    return metrics


def _memory_format(device: torch.device) -> torch.memory_format:
    # channels_last feeds cuDNN's NHWC kernels on GPU; on CPU it only adds copies.
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def restore_state(session: Session, model: nn.Module, optimizer, log) -> tuple[LoopState, list[dict], dict | None]:
    """Resume from the session's checkpoint if there is a good one; a corrupt one is reported and ignored."""
    with session.restore_dir() as directory:
        if directory is None:
            return LoopState(), [], None
        try:
            state = read_checkpoint_file(Path(directory), STATE_FILE)
            best = read_checkpoint_file(Path(directory), BEST_FILE) if (Path(directory) / BEST_FILE).exists() else None
        except (CheckpointError, RuntimeError, EOFError, OSError) as exc:
            log(f"WARNING: ignoring checkpoint {directory}: {exc}; restarting this trial from epoch 0")
            return LoopState(), [], None
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    loop = LoopState(epoch=state["epoch"], best_value=state.get("best_value"), best_epoch=state.get("best_epoch", 0))
    log(f"resumed from checkpoint at epoch {loop.epoch}")
    return loop, list(state.get("history", [])), best


def run_training(study: StudyConfig, session: Session, log=print) -> dict[str, Any]:
    """Train `study.train` on the study's data; report every epoch with a checkpoint; return the last metrics."""
    train = study.train
    seed_everything(train.seed + session.world_rank)
    device = session.device()
    data = prepare_data(resolve_data_root(study.data), size=train.image_size, color=train.color,
                        split=study.data.split, val_fraction=study.data.val_fraction, seed=study.data.seed,
                        val_fold=study.data.val_fold, cache_dir=study.data.cache_dir)
    prep = preprocessing_facts(study, data.images, data.train_idx)
    kwargs = model_kwargs(train)
    model = get_model(train.model, **kwargs).to(device, memory_format=_memory_format(device))
    model = session.prepare_model(model)
    optimizer = build_optimizer(train.optimizer, model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    weight = class_weight_tensor(data.labels[data.train_idx], device) if train.class_weights else None
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    train_loader, val_loader = build_loaders(study, data, prep, session)
    loop, history, best = restore_state(session, model, optimizer, log)
    metric, mode = study.tune.metric, study.tune.mode
    last: dict[str, Any] = history[-1] if history else {}
    for epoch in range(loop.epoch + 1, train.epochs + 1):
        if hasattr(train_loader.sampler, "set_epoch"):  # DistributedSampler: a new shuffle each epoch under DDP
            train_loader.sampler.set_epoch(epoch)
        epoch_metrics = {"epoch": epoch, **train_one_epoch(model, train_loader, optimizer, loss_fn, device),
                         **evaluate(model, val_loader, loss_fn, device)}
        if is_better(epoch_metrics.get(metric), loop.best_value, mode):
            loop.best_value, loop.best_epoch = epoch_metrics[metric], epoch
            best = {"model": _cpu_state(model), "model_name": train.model, "model_kwargs": kwargs,
                    "preprocessing": prep, "config": study.to_dict(), "epoch": epoch,
                    "metrics": {k: v for k, v in epoch_metrics.items() if isinstance(v, (int, float))}}
        loop.epoch = epoch
        history.append({k: v for k, v in epoch_metrics.items() if isinstance(v, (int, float))})
        last = {**epoch_metrics, "best_epoch": loop.best_epoch, f"best_{metric}": loop.best_value,
                "train_samples": int(len(data.train_idx)), "val_samples": int(len(data.val_idx)),
                "data_fingerprint": data.fingerprint}
        _report_epoch(session, model, optimizer, loop, history, best, last)
        log(format_epoch(last, metric))
        if train.stop_on_nan and not math.isfinite(epoch_metrics["train_loss"]):
            log(f"stopping: training loss is {epoch_metrics['train_loss']} at epoch {epoch}")
            break
    return last


def _report_epoch(session: Session, model, optimizer, loop: LoopState, history, best, metrics) -> None:
    # Only rank 0 writes a checkpoint: with DDP every rank holds the same weights.
    if session.world_rank != 0:
        session.report(metrics, None)
        return
    state = {"model": _cpu_state(model), "optimizer": optimizer.state_dict(), "epoch": loop.epoch,
             "best_value": loop.best_value, "best_epoch": loop.best_epoch, "history": history}
    with tempfile.TemporaryDirectory(prefix="leukotune-ckpt-") as tmp:
        write_checkpoint(Path(tmp), state, best)
        session.report(metrics, Path(tmp))


def format_epoch(metrics: dict[str, Any], metric: str) -> str:
    return (f"epoch {metrics['epoch']:>3}  train_loss {metrics['train_loss']:.4f}  val_loss {metrics['val_loss']:.4f}  "
            f"val_acc {metrics['val_accuracy']:.4f}  {metric} {metrics.get(metric, float('nan')):.4f}  "
            f"({metrics['train_samples_per_second']:.0f} img/s)")
