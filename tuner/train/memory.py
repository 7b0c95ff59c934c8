"""A trial's peak GPU memory, estimated before anything starts: enough to refuse a packing that cannot fit.

The model is built on PyTorch's meta device (shapes only: no weights loaded, no memory, milliseconds), one
forward pass records every layer's output size, and the rest is arithmetic. It errs on the high side (frozen
layers' activations are counted as if kept for backward), because a refused packing costs a config edit while an
out-of-memory trial costs a wasted GPU slot and a retry.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from leukotune.models import get_model, optimizer_state_values
from leukotune.tuner.config import TrainConfig, model_kwargs

# What a CUDA context, cuDNN/cuBLAS workspaces and the caching allocator's slack take in each trial's process.
PROCESS_OVERHEAD_BYTES = 768 * 2**20
ACTIVATION_BYTES = 2  # bf16 under autocast
# Forward outputs kept for backward, and the gradients of the same size that backward makes, alive together.
ACTIVATION_FACTOR = 2


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients_and_optimizer: int
    activations: int
    data: int
    overhead: int = PROCESS_OVERHEAD_BYTES

    @property
    def total(self) -> int:
        return self.weights + self.gradients_and_optimizer + self.activations + self.data + self.overhead

    def describe(self) -> str:
        gib = 2**30
        return (f"{self.total / gib:.1f} GiB (weights {self.weights / gib:.2f}, gradients+optimiser "
                f"{self.gradients_and_optimizer / gib:.2f}, activations {self.activations / gib:.2f}, "
                f"resident images {self.data / gib:.2f}, CUDA context {self.overhead / gib:.2f})")


def _activation_values(model: nn.Module, channels: int, size: int) -> int:
    """Values the leaf layers output for one image (a forward on the meta device) that backward may need.

    Layers run before the first trainable one (a frozen trunk) keep nothing for backward; only the largest of their
    outputs counts, as it is alive while the next layer runs.
    """
    kept, transient, trainable_seen = 0, 0, False

    def count(module, _inputs, output) -> None:
        nonlocal kept, transient, trainable_seen
        if not isinstance(output, torch.Tensor):
            return
        trainable_seen = trainable_seen or any(p.requires_grad for p in module.parameters())
        if trainable_seen:
            kept += output.numel()
        else:
            transient = max(transient, output.numel())

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(torch.empty(1, channels, size, size, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return kept + 2 * transient + channels * size * size


def estimate_trial_memory(train: TrainConfig, split_images: int = 0) -> MemoryEstimate:
    """Peak bytes of one trial of `train` on a GPU; `split_images`: images resident there (train.pipeline=device)."""
    kwargs = model_kwargs(train)
    if "weights" in kwargs:
        kwargs = {**kwargs, "weights": None}
    with torch.device("meta"):
        model = get_model(train.model, **kwargs)
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    channels = 1 if train.color == "gray" else 3
    per_image = _activation_values(model, channels, train.image_size)
    states = optimizer_state_values(train.optimizer)  # float32 values per trainable value
    return MemoryEstimate(
        weights=sum(p.numel() for p in params) * 4,
        gradients_and_optimizer=trainable * 4 * (1 + states),
        activations=per_image * train.batch_size * ACTIVATION_BYTES * ACTIVATION_FACTOR,
        data=split_images * channels * train.image_size**2,
    )
