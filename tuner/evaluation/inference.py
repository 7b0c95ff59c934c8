"""The one inference path: a trained network rebuilt from a checkpoint or a logged model, fed cells preprocessed as
it was trained (data/preprocess.py), and P(ALL) out, optionally averaged over the four rotations.

The test side after a search, `leukotune predict` and `leukotune evaluate` all call `probabilities`. Lean on
purpose (torch, the data and the models; no MLflow): the test side's Ray task imports it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from leukotune.data.preprocess import ROTATIONS, Normalization, variant
from leukotune.tuner.train.checkpoints import rebuild_model
from leukotune.tuner.train.loop import autocast_for

# Class order of every leukotune network's output (label 1 is ALL).
CLASS_NAMES = ["hem", "all"]
# What a model must say about its input to be fed: the facts the training loop saved with it.
REQUIRED_PREPROCESSING = ("image_size", "color", "mean", "std")


@dataclass(frozen=True)
class TrainedModel:
    """A rebuilt network in eval mode and the facts needed to feed it (its `preprocessing`: image size, colour,
    mean and std, as it was trained)."""

    network: nn.Module
    preprocessing: dict[str, Any]
    class_names: list[str]
    model_name: str
    best_epoch: int | None
    # Calibration and decision, fitted on the validation side after the search (1.0 and 0.5: as trained). The
    # logits are divided by `temperature` before the softmax; a cell is called ALL when P(ALL) >= `threshold`.
    temperature: float = 1.0
    threshold: float = 0.5

    @classmethod
    def from_checkpoint(cls, best: dict[str, Any]) -> TrainedModel:
        """A trial's best-epoch checkpoint (`best.pt`), rebuilt whole with no weights file at hand."""
        return cls(rebuild_model(best), dict(best["preprocessing"]), list(CLASS_NAMES), best["model_name"],
                   best.get("epoch"))

    @property
    def all_index(self) -> int:
        return self.class_names.index("all")

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: torch.device) -> TrainedModel:
        self.network.to(device)
        return self


@torch.inference_mode()
def probabilities(model: TrainedModel, images: np.ndarray, indices: np.ndarray | None = None, *, tta: bool = False,
                  batch_size: int = 32) -> np.ndarray:
    """P(ALL) of each uint8 (C, H, W) image of `images` (or of `images[indices]`, read a batch at a time from a
    memory-mapped cache), decoded at the model's size and colour, normalised as it was trained, on the model's
    device; with `tta` the mean over the four rotations (cells have no preferred orientation)."""
    prep = model.preprocessing
    normalization = Normalization(prep["mean"], prep["std"], channels=images.shape[1])
    chosen = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
    device, size = model.device, max(1, batch_size)
    out = []
    for start in range(0, len(chosen), size):
        pixels = np.asarray(images[chosen[start:start + size]], dtype=np.uint8)
        batch = torch.from_numpy(normalization.numpy(pixels)).to(device)
        views = [variant(batch, k) for k in range(ROTATIONS)] if tta else [batch]
        with autocast_for(device):
            probs = [torch.softmax(model.network(view).float() / model.temperature, dim=1) for view in views]
        mean = probs[0] if len(probs) == 1 else torch.stack(probs).mean(dim=0)
        out.append(mean[:, model.all_index].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
