"""Optimisers by name, from one table, so a study's `optimizer: rmsprop` needs no if/elif ladder."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

__all__ = ["UnknownOptimizerError", "build_optimizer", "list_optimizers", "optimizer_state_values"]


class UnknownOptimizerError(KeyError):
    """An optimiser name not in the table; the message lists the valid names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class _Optimizer:
    cls: type[torch.optim.Optimizer]
    takes_momentum: bool
    # Values of state the optimiser keeps per trainable value (a trial's memory estimate counts them).
    state_values: int


_OPTIMIZERS: dict[str, _Optimizer] = {
    # torch's RMSprop accepts momentum, but the paper used Keras' RMSprop, whose default is none: passing the
    # SGD-oriented default of 0.9 would silently change the paper's optimiser. Its state: the square average.
    "rmsprop": _Optimizer(torch.optim.RMSprop, takes_momentum=False, state_values=1),
    "adam": _Optimizer(torch.optim.Adam, takes_momentum=False, state_values=2),  # two moments
    "adamw": _Optimizer(torch.optim.AdamW, takes_momentum=False, state_values=2),
    "sgd": _Optimizer(torch.optim.SGD, takes_momentum=True, state_values=1),  # the momentum buffer
}


def list_optimizers() -> list[str]:
    """Names accepted by ``build_optimizer``, sorted."""
    return sorted(_OPTIMIZERS)


def optimizer_state_values(name: str) -> int:
    """Values of state `name` keeps per trainable value: 1 for RMSprop and SGD with momentum, 2 for Adam."""
    return _entry(name).state_values


def _entry(name: str) -> _Optimizer:
    try:
        return _OPTIMIZERS[name]
    except KeyError:
        raise UnknownOptimizerError(
            f"unknown optimizer {name!r}; valid names: {', '.join(list_optimizers())}"
        ) from None


def build_optimizer(
    name: str,
    params: Iterable[nn.Parameter],
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """Optimiser ``name`` over the trainable ``params`` only; ``momentum`` is used by SGD alone.

    Frozen parameters are left out so they cost no optimiser state and weight decay cannot move them.
    """
    entry = _entry(name)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters: is the whole model frozen?")
    extra = {"momentum": momentum} if entry.takes_momentum else {}
    return entry.cls(trainable, lr=lr, weight_decay=weight_decay, **extra)
