"""The models one trial trains: one for a single train/validation split, K for K-fold cross-validation.

A cross-validated trial trains its K fold models side by side, an epoch of each in turn, and reports once per epoch:
each fold's numbers under `fold{k}_` keys, their mean under the plain keys (so ASHA stops trials, and Optuna
learns, on the fold mean at every epoch) and the spread of every validation metric under `_std` keys. Why side by
side rather than one fold after another: ASHA's rungs compare trials at the same epoch, and only the mean over all
folds at that epoch is a fair comparison; folds in sequence would leave the scheduler a single fold's score for most
of a trial's life (docs/cross-validation.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

# Timings add up over the folds (the epoch took all of them), and so do the confusion counts (every non-test cell
# is validated once: the pooled out-of-fold matrix); every other number is averaged.
_SUMMED_PREFIXES = ("train_seconds", "val_seconds", "val_cm_")
# Per-fold keys worth a chart of their own in the trial's run; timings and throughput are not.
_PER_FOLD_PREFIXES = ("val_", "train_loss", "train_accuracy")


@dataclass
class FoldModel:
    """One model of a trial with what trains and validates it."""

    model: nn.Module  # as the session prepared it (and train.compile compiled it)
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    train_batches: Any  # a DataLoader or a DeviceSplit
    val_batches: Any
    train_samples: int
    val_samples: int
    frozen_digest: str | None  # of the frozen backbone as built (the same for every fold: one weights file)


def combine_fold_metrics(per_fold: list[dict[str, float]]) -> dict[str, float]:
    """One epoch's report from each fold's metrics: unchanged for a single split; else the mean (sum for timings)
    under the plain keys, `fold{k}_<key>` for each fold and `<key>_std` (sample standard deviation) for the
    validation metrics."""
    if len(per_fold) == 1:
        return dict(per_fold[0])
    combined: dict[str, float] = {}
    for key in per_fold[0]:
        values = np.array([metrics[key] for metrics in per_fold], dtype=np.float64)
        summed = key.startswith(_SUMMED_PREFIXES)
        combined[key] = float(values.sum() if summed else values.mean())
        if key.startswith("val_") and not summed:
            combined[f"{key}_std"] = float(values.std(ddof=1))
        if key.startswith(_PER_FOLD_PREFIXES) and not summed:
            combined.update({f"fold{k}_{key}": float(value) for k, value in enumerate(values)})
    seen = sum(m["train_samples_per_second"] * m["train_seconds"] for m in per_fold)
    combined["train_samples_per_second"] = seen / max(combined["train_seconds"], 1e-9)
    return combined


def ensemble_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The state dict of `models.FoldEnsemble` over the fold models' own state dicts (in fold order)."""
    return {f"members.{k}.{name}": tensor for k, state in enumerate(states) for name, tensor in state.items()}


def saved_members(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Each fold model's `model` and `optimizer` state from a `state.pt` payload (a single split's keeps them at
    the top, as checkpoints always have)."""
    if "members" in state:
        return list(state["members"])
    return [{"model": state["model"], "optimizer": state["optimizer"]}]


def members_payload(members: list[dict[str, Any]]) -> dict[str, Any]:
    """The inverse of `saved_members`: what `state.pt` holds of the fold models."""
    if len(members) == 1:
        return dict(members[0])
    return {"members": members}
