"""The one training loop: used by `leukotune train` (Ray Train workers) and by every Tune trial.

Where it runs is hidden behind a small `Session` (see tuner/sessions.py): the loop asks it for the device, the
checkpoint to resume from, and where to report each epoch. That keeps this file free of Ray and testable alone.
It imports without Ray, MLflow, Optuna, pydantic and PyYAML too (the study schema loads when `run_training` runs):
bench/gpu_bench.py times `train_one_epoch` on a bare GPU machine that has torch and nothing else.
"""
from __future__ import annotations

import gc
import math
import random
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from leukotune.data import CellDataset, augmentation_factor, channel_stats, collate_batch
from leukotune.models import build_optimizer, get_model, get_model_spec
from leukotune.tuner.metrics import classification_metrics, is_better
from leukotune.tuner.train.checkpoints import (
    BEST_FILE,
    STATE_FILE,
    CheckpointError,
    CheckpointFolder,
    frozen_digest,
    load_trainable_state,
    read_checkpoint_file,
    trainable_state,
)
from leukotune.tuner.train.folds import (
    FoldModel,
    combine_fold_metrics,
    ensemble_state,
    members_payload,
    saved_members,
)
from leukotune.tuner.train.pipeline import Batches, DeviceSplit, on_device, resolve_pipeline, set_epoch

if TYPE_CHECKING:
    from leukotune.tuner.config import StudyConfig

# train.compile: off, torch.compile's default mode, or CUDA graphs ("reduce-overhead") for small batches, where a
# step is a hundred-odd kernel launches and the host, not the GPU, sets the pace.
COMPILE_MODES: dict[Any, str | None] = {False: None, True: "default", "default": "default",
                                        "reduce-overhead": "reduce-overhead"}


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
    best_spread: float | None = None  # the metric's spread over the folds at the best epoch (cross-validation)


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
    # Never augmented; under DDP each rank scores its own stride and validate(gather=True) joins them.
    val_ds = CellDataset(data.images, data.labels, data.val_idx[session.world_rank::session.world_size], **common)
    pin = session.device().type == "cuda"
    generator = torch.Generator().manual_seed(train.seed)
    train_loader = DataLoader(train_ds, batch_size=train.batch_size, shuffle=True, generator=generator,
                              pin_memory=pin, drop_last=len(train_ds) > train.batch_size,
                              collate_fn=collate_batch)
    val_loader = DataLoader(val_ds, batch_size=max(train.batch_size, 64), shuffle=False, pin_memory=pin,
                            collate_fn=collate_batch)
    return session.prepare_loader(train_loader), val_loader


def build_device_splits(study: StudyConfig, data, prep: dict[str, Any], session: Session
                        ) -> tuple[DeviceSplit, DeviceSplit]:
    """Both splits resident on the session's device (train.pipeline=device), sharded like build_loaders'."""
    train, device = study.train, session.device()
    common = {"mean": prep["mean"], "std": prep["std"], "device": device}
    materialize = train.augment_mode == "materialize"
    length = len(data.train_idx) * augmentation_factor(train.augment, materialize)
    train_split = DeviceSplit(data.images, data.labels, data.train_idx, batch_size=train.batch_size,
                              augment=train.augment, materialize=materialize, shuffle=True,
                              drop_last=length > train.batch_size, seed=train.seed, rank=session.world_rank,
                              world_size=session.world_size, **common)
    val_split = DeviceSplit(data.images, data.labels, data.val_idx[session.world_rank::session.world_size],
                            batch_size=max(train.batch_size, 64), **common)
    return train_split, val_split


def choose_pipeline(study: StudyConfig, data, session: Session, log=print) -> str:
    """train.pipeline for every model of the trial: `device` (resident splits) unless asked for the loader or the
    images of all its splits (each fold model holds its own) do not fit; else `loader`."""
    split_bytes = sum(len(train) + len(val) for train, val in data.fold_sides()) * int(np.prod(data.images.shape[1:]))
    # Free memory differs between ranks; a rank on the loader and another on the device split would step through
    # different batch counts and wait in DDP's all-reduce until NCCL's timeout. Rank 0 decides for all.
    choice = rank0_decides(resolve_pipeline(study.train.pipeline, split_bytes, session.device()), session)
    log(f"input pipeline: {choice} (train.pipeline={study.train.pipeline}, {split_bytes / 2**20:.0f} MiB of images)")
    return choice


def build_batches(study: StudyConfig, data, prep: dict[str, Any], session: Session, choice: str
                  ) -> tuple[Batches, Batches]:
    """The train and validation batches of `data`'s split through the chosen pipeline."""
    if choice == "device":
        return build_device_splits(study, data, prep, session)
    return build_loaders(study, data, prep, session)


def describe_device(device: torch.device) -> str:
    """What a trial trained on, as its run records it: `cpu`, or `cuda:0 (NVIDIA H200)`."""
    if device.type != "cuda":
        return device.type
    return f"{device} ({torch.cuda.get_device_name(device)})"


def class_weight_tensor(labels: np.ndarray, device: torch.device) -> torch.Tensor:
    """Inverse-frequency weights: C-NMC is about 2:1 ALL:hem, so hem errors would otherwise count half."""
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    weights = counts.sum() / (2.0 * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32, device=device)


def autocast_for(device: torch.device, enabled: bool = True):
    # bf16 on GPU only: on CPU autocast slows the small CNN down and changes nothing useful.
    return torch.autocast("cuda", dtype=torch.bfloat16) if enabled and device.type == "cuda" else nullcontext()


def _distributed(gather: bool) -> bool:
    return gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def train_one_epoch(model: nn.Module, loader: Batches, optimizer, loss_fn, device: torch.device, *,
                    gather: bool = False, mixed_precision: bool = True) -> dict[str, float]:
    """One pass over `loader` (a DataLoader or a DeviceSplit); loss and accuracy are read back once, at the end.

    gather=True (DDP, every rank calling): loss, accuracy and images per second are over all ranks, so every rank
    reports, and decides on, the same numbers. mixed_precision=False trains in float32 (a baseline for benches).
    """
    model.train()
    # Sums stay on the device: a float()/int() per step would wait for the GPU to finish every batch.
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    start = time.perf_counter()
    for images, labels in on_device(loader, device):
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(device, mixed_precision):
            logits = model(images)
            loss = loss_fn(logits.float(), labels)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
    sums = torch.stack([total_loss, correct, torch.tensor(float(seen), dtype=torch.float64, device=device)])
    if _distributed(gather):
        dist.all_reduce(sums)  # also lines the ranks up: the seconds below are the slowest rank's
    loss_sum, correct_sum, seen_all = sums.tolist()  # the epoch's one synchronisation
    seconds = time.perf_counter() - start
    return {"train_loss": loss_sum / max(seen_all, 1), "train_accuracy": correct_sum / max(seen_all, 1),
            "train_seconds": seconds, "train_samples_per_second": seen_all / max(seconds, 1e-9)}


@torch.no_grad()
def validate(model: nn.Module, loader: Batches, loss_fn, device: torch.device, *, gather: bool = False
             ) -> dict[str, float]:
    """val_* metrics of `model` over `loader` (a DataLoader or a DeviceSplit), read back from the device once.

    gather=True (DDP, every rank calling): each rank scored its own shard; predictions are joined before scoring.
    """
    start = time.perf_counter()
    y_true, prob_all, loss_sum = validation_outputs(model, loader, loss_fn, device)
    if _distributed(gather):
        y_true, prob_all, loss_sum = _gather_predictions(y_true, prob_all, loss_sum)
    metrics = {f"val_{k}": v for k, v in classification_metrics(y_true, prob_all).items()}
    metrics["val_loss"] = loss_sum / max(len(y_true), 1)
    metrics["val_seconds"] = time.perf_counter() - start
    return metrics


@torch.no_grad()
def validation_outputs(model: nn.Module, loader: Batches, loss_fn, device: torch.device
                       ) -> tuple[np.ndarray, np.ndarray, float]:
    """What `validate` scores: the label and P(ALL) of every sample of `loader` in order, and the summed loss."""
    model.eval()
    probs, labels_all = [], []
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    for images, labels in on_device(loader, device):
        with autocast_for(device):
            logits = model(images).float()
        total_loss += loss_fn(logits, labels) * len(labels)
        probs.append(torch.softmax(logits, dim=1)[:, 1])
        labels_all.append(labels)
    y_true = torch.cat(labels_all).cpu().numpy() if labels_all else np.zeros(0, dtype=np.int64)
    prob_all = torch.cat(probs).cpu().numpy() if probs else np.zeros(0, dtype=np.float32)
    return y_true, prob_all, total_loss.item()


def _gather_predictions(y_true: np.ndarray, probs: np.ndarray, loss_sum: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Every rank's shard of labels, probabilities and summed loss, joined (validation sets are small)."""
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (y_true, probs, loss_sum))
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            float(sum(p[2] for p in parts)))


def rank0_decides(value: Any, session: Session) -> Any:
    """Rank 0's `value` on every rank (a collective: every rank calls it at the same point).

    A choice each rank made alone (the input pipeline from its own free memory, stopping on its own loss) can send
    ranks down different paths, and the ones left in a collective wait until NCCL's timeout.
    """
    if session.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value if session.world_rank == 0 else None]
    device = session.device()
    dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
    return box[0]


def _memory_format(device: torch.device) -> torch.memory_format:
    # channels_last feeds cuDNN's NHWC kernels on GPU; on CPU it only adds copies.
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def configure_device(device: torch.device) -> None:
    """Per-process settings of the training device: cuDNN picks its fastest kernels, once per input shape
    (a trial's shapes are fixed, so the search at the first batches pays back within the epoch)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def compile_model(model: nn.Module, setting: Any) -> nn.Module:
    """`train.compile` applied in place (the state dict keys, and so the checkpoints, stay the plain model's).

    Call it on the model as DDP wrapped it: compiling the wrapper lets torch split the graph at DDP's gradient
    buckets so communication overlaps the backward pass.
    """
    mode = COMPILE_MODES[setting]
    if mode is not None:
        model.compile(mode=mode)
    return model


def release_trial_state(device: torch.device, setting: Any) -> None:
    """What a finished trial leaves in its process, released: Tune reuses trial processes, and the next trial
    must not inherit compiled graphs (or their CUDA graph pools) nor the memory the caching allocator holds."""
    if COMPILE_MODES[setting] is not None:
        torch.compiler.reset()
    if device.type == "cuda":
        gc.collect()  # the trial's tensors may sit in reference cycles until the next collection
        torch.cuda.empty_cache()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # Written to disk at once by the caller: a host tensor needs no clone, a device tensor is copied by .cpu().
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def restore_state(session: Session, folds: list[FoldModel], digest: str | None, folder: CheckpointFolder | None,
                  log) -> tuple[LoopState, list[dict]]:
    """Resume from the session's checkpoint if there is a good one; a corrupt one is reported and ignored.

    `digest` is the frozen part of the network as built (checked against a partial state); the checkpoint's best.pt
    is copied as it is into `folder` (rank 0's), so later epochs report it until a better epoch replaces it.
    """
    with session.restore_dir() as directory:
        if directory is None:
            return LoopState(), []
        try:
            state = read_checkpoint_file(Path(directory), STATE_FILE)
            if folder is not None and (Path(directory) / BEST_FILE).exists():
                folder.copy_best(Path(directory))
        except (CheckpointError, RuntimeError, EOFError, OSError) as exc:
            log(f"WARNING: ignoring checkpoint {directory}: {exc}; restarting this trial from epoch 0")
            return LoopState(), []
    members = saved_members(state)
    if len(members) != len(folds):
        raise CheckpointError(f"the checkpoint holds {len(members)} fold model(s) and this trial trains "
                              f"{len(folds)}: it belongs to another data.cv_folds")
    # A checkpoint that reads fine but does not fit this network (or its frozen weights) is an error, not damage:
    # it fails the trial loudly instead of training on half-loaded weights.
    for fold, member in zip(folds, members):
        load_trainable_state(unwrap(fold.model), {**member, "frozen_sha256": state.get("frozen_sha256")}, digest)
        fold.optimizer.load_state_dict(member["optimizer"])
    loop = LoopState(epoch=state["epoch"], best_value=state.get("best_value"), best_epoch=state.get("best_epoch", 0),
                     best_spread=state.get("best_spread"))
    log(f"resumed from checkpoint at epoch {loop.epoch}")
    return loop, list(state.get("history", []))


def run_training(study: StudyConfig, session: Session, log=print) -> dict[str, Any]:
    """Train `study.train` on the study's data; report every epoch with a checkpoint; return the last metrics."""
    try:
        return _train(study, session, log)
    finally:
        release_trial_state(session.device(), study.train.compile)


def _train(study: StudyConfig, session: Session, log) -> dict[str, Any]:
    # Imported here, not at the top: the schema needs pydantic and PyYAML, and the loop's per-epoch functions must
    # import on a machine that has torch and nothing else (bench/gpu_bench.py).
    from leukotune.tuner.config import model_kwargs
    from leukotune.tuner.train.data_source import prepare_study_data

    train = study.train
    seed_everything(train.seed + session.world_rank)
    device = session.device()
    configure_device(device)
    data = prepare_study_data(study)  # its test_idx is never read here: the test side waits for the search's end
    # One normalisation for all of a trial's models (their ensemble is fed one way): the cells they train on. With
    # cross-validation that is every non-test cell, so each fold model's mean/std includes its own validation fold's
    # pixels: a first-order pixel statistic, no labels; the price of feeding the ensemble one way.
    prep = preprocessing_facts(study, data.images, np.concatenate([t for t, _ in data.fold_sides()]))
    kwargs = model_kwargs(train)
    pipeline = choose_pipeline(study, data, session, log)
    folds = [build_fold_model(study, data, train_idx, val_idx, prep, kwargs, session, pipeline)
             for train_idx, val_idx in data.fold_sides()]
    if len(folds) > 1:
        log(f"cross-validation: {len(folds)} fold models, each validated on its own patients")
    digest = folds[0].frozen_digest
    metric, mode = study.tune.metric, study.tune.mode
    # Only rank 0 writes checkpoints: with DDP every rank holds the same weights.
    with _checkpoint_folder(session) as folder:
        loop, history = restore_state(session, folds, digest, folder, log)
        last: dict[str, Any] = history[-1] if history else {}
        for epoch in range(loop.epoch + 1, train.epochs + 1):
            epoch_metrics = {"epoch": epoch, **train_folds_one_epoch(folds, epoch, device, session.world_size > 1)}
            improved = is_better(epoch_metrics.get(metric), loop.best_value, mode)
            if improved:
                loop.best_value, loop.best_epoch = epoch_metrics[metric], epoch
                loop.best_spread = epoch_metrics.get(f"{metric}_std")
            loop.epoch = epoch
            history.append({k: v for k, v in epoch_metrics.items() if isinstance(v, (int, float))})
            last = {**epoch_metrics, "best_epoch": loop.best_epoch, f"best_{metric}": loop.best_value,
                    **({f"best_{metric}_std": loop.best_spread} if loop.best_spread is not None else {}),
                    # per model: a cross-validated trial's fold models each train and validate on this many
                    "train_samples": round(np.mean([f.train_samples for f in folds])),
                    "val_samples": round(np.mean([f.val_samples for f in folds])),
                    "cv_folds": len(folds) if len(folds) > 1 else 0,
                    "data_fingerprint": data.fingerprint, "device": describe_device(device), "pipeline": pipeline}
            best = None
            if improved:
                best = {"model_name": train.model, "model_kwargs": kwargs, "preprocessing": prep,
                        "config": study.to_dict(), "epoch": epoch, "metrics": history[-1]}
            last["checkpoint_seconds"] = write_epoch_checkpoint(folder, folds, loop, history, digest, best)
            session.report(last, folder.directory if folder is not None else None)
            log(format_epoch(last, metric))
            if train.stop_on_nan and rank0_decides(not math.isfinite(epoch_metrics["train_loss"]), session):
                log(f"stopping: training loss is {epoch_metrics['train_loss']} at epoch {epoch}")
                break
    return last


def build_fold_model(study: StudyConfig, data, train_idx: np.ndarray, val_idx: np.ndarray, prep: dict[str, Any],
                     kwargs: dict[str, Any], session: Session, pipeline: str) -> FoldModel:
    """One model of the trial on its side of the data: built, placed, wrapped, compiled, with its optimiser, its
    class-weighted loss and its batches."""
    train, device = study.train, session.device()
    model = get_model(train.model, **kwargs)
    digest = frozen_digest(model)  # on the host, as built: what a resumed partial state.pt must have had under it
    model = model.to(device, memory_format=_memory_format(device))
    model = compile_model(session.prepare_model(model), train.compile)  # after the DDP wrap
    optimizer = build_optimizer(train.optimizer, model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    weight = class_weight_tensor(data.labels[train_idx], device) if train.class_weights else None
    side = replace(data, train_idx=train_idx, val_idx=val_idx)
    train_batches, val_batches = build_batches(study, side, prep, session, pipeline)
    return FoldModel(model, optimizer, nn.CrossEntropyLoss(weight=weight), train_batches, val_batches,
                     int(len(train_idx)), int(len(val_idx)), digest)


def train_folds_one_epoch(folds: list[FoldModel], epoch: int, device: torch.device, distributed: bool
                          ) -> dict[str, float]:
    """An epoch of every model of the trial, then validation of each; their metrics combined into one report."""
    per_fold = []
    for fold in folds:
        set_epoch(fold.train_batches, epoch)
        # Validation runs on the unwrapped model: DDP's forward would sync buffers across ranks whose shards
        # differ in length; each rank scores its shard and validate(gather=True) joins them.
        per_fold.append({**train_one_epoch(fold.model, fold.train_batches, fold.optimizer, fold.loss_fn, device,
                                           gather=distributed),
                         **validate(unwrap(fold.model), fold.val_batches, fold.loss_fn, device, gather=distributed)})
    return combine_fold_metrics(per_fold)


@contextmanager
def _checkpoint_folder(session: Session) -> Iterator[CheckpointFolder | None]:
    """Rank 0's checkpoint folder for the whole trial (the session copies it at each report); None elsewhere."""
    if session.world_rank != 0:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="leukotune-ckpt-") as tmp:
        yield CheckpointFolder(Path(tmp))


def write_epoch_checkpoint(folder: CheckpointFolder | None, folds: list[FoldModel], loop: LoopState,
                           history: list[dict], digest: str | None, best: dict[str, Any] | None) -> float:
    """This epoch's files: state.pt (a frozen backbone left out), and best.pt only when this epoch is the new best
    (a cross-validated trial's best.pt is the ensemble of its fold models). Returns the seconds spent, reported
    beside the epoch's own."""
    if folder is None:
        return 0.0
    start = time.perf_counter()
    if best is not None:  # the whole network: export rebuilds from it alone
        if len(folds) == 1:
            folder.write_best({"model": _cpu_state(folds[0].model), **best})
        else:
            folder.write_best({"model": ensemble_state([_cpu_state(f.model) for f in folds]),
                               "ensemble_members": len(folds), **best})
    members = [{"model": trainable_state(unwrap(f.model)), "optimizer": f.optimizer.state_dict()} for f in folds]
    folder.write_state({**members_payload(members), "frozen_sha256": digest, "epoch": loop.epoch,
                        "best_value": loop.best_value, "best_epoch": loop.best_epoch, "best_spread": loop.best_spread,
                        "history": history})
    return time.perf_counter() - start


def format_epoch(metrics: dict[str, Any], metric: str) -> str:
    return (f"epoch {metrics['epoch']:>3}  train_loss {metrics['train_loss']:.4f}  val_loss {metrics['val_loss']:.4f}  "
            f"val_acc {metrics['val_accuracy']:.4f}  {metric} {metrics.get(metric, float('nan')):.4f}  "
            f"({metrics['train_samples_per_second']:.0f} img/s, "
            f"checkpoint {metrics.get('checkpoint_seconds', 0.0):.2f} s)")
