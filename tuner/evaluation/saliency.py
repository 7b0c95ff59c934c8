"""Grad-CAM maps of a trained model on a few test cells, and the model-randomisation check that decides whether
they may be shown.

Grad-CAM (Selvaraju et al., 2017; captum's `LayerGradCam`) weighs each channel of the network's last convolutional
stage by the mean gradient of the called class's logit over that channel, sums the weighted channels, keeps the
positive part and upsamples it to the image: where in the cell the evidence for the model's call sits. The check
(Adebayo et al., 2018, "model randomisation") draws the same maps with every weight of the network re-initialised:
a map that hardly changes shows the image (edges, the bright cell on its black background), not what the model
learned, and must not be shown as an explanation. docs/saliency.md says how to read both.

Lean on purpose, like inference.py (torch and numpy at import): captum, which loads matplotlib, is imported where a
map is drawn, and the figures are made in the driver by tuner/tracking/saliency_figures.py.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from leukotune.data.preprocess import Normalization
from leukotune.models.ensemble import FoldEnsemble
from leukotune.tuner.evaluation.inference import TrainedModel

__all__ = ["DEFAULT_BOUND", "PER_GROUP", "Cell", "SaliencyReport", "choose_cells", "gradcam", "randomized_copy",
           "rank_correlation", "saliency_report", "target_layer", "target_layers"]

# The check passes when the median Spearman rank correlation between a cell's map from the trained network and its
# map from the randomised one is below this. At 0.5 the two rankings of the pixels share a quarter of their variance
# (rho squared). In Adebayo et al. (2018) the methods that failed (Guided Backprop, Guided Grad-CAM) kept visibly the
# same maps once the weights were random, and those that passed (gradients, Grad-CAM) lost their resemblance; 0.5
# sits between, with room for the agreement every map of a bright cell on a black background shares with any other.
# A convention, so the report always carries the number itself.
DEFAULT_BOUND = 0.5
# Cells per (true class, called right or wrong) group: 2 x 2 x 2 = up to 8 cells.
PER_GROUP = 2


# ---------------------------------------------------------------- which layer

def _holds_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def target_layer(network: nn.Module) -> str:
    """Dotted name of the layer Grad-CAM reads in a single network: its last convolutional stage, whose output the
    head pools.

    Found by one rule for every registered architecture rather than a table per model name, so a new backbone needs
    nothing here: walk down through wrappers (a module with one convolution-holding child, such as TransferNet's
    `backbone` or torchvision's `features` holder) until a module has several convolution-holding children (the
    stages of the feature extractor), and take the last of them. That is `features.<last block>` of the paper's CNN
    (conv, ReLU, max-pool: its rectified, pooled output), `backbone.layer4` of ResNet-50 and `backbone.features.<last>`
    of MobileNetV2, EfficientNet and ConvNeXt: the layers Grad-CAM's authors and captum's tutorials use. A network
    whose only convolution is one layer gets that layer.
    """
    name, module = "", network
    while True:
        holders = [(child_name, child) for child_name, child in module.named_children() if _holds_conv(child)]
        if not holders:
            if isinstance(module, nn.Conv2d):
                return name
            raise ValueError(f"{type(network).__name__} has no Conv2d layer for Grad-CAM to read")
        child_name, child = holders[-1]
        name, module = f"{name}.{child_name}" if name else child_name, child
        if len(holders) > 1:
            return name


def target_layers(network: nn.Module) -> list[tuple[nn.Module, str]]:
    """(network, layer name) pairs to attribute: one for a single network; one per member of a fold ensemble, each
    member read at its own last stage (the ensemble has no shared feature map to read)."""
    members = list(network.members) if isinstance(network, FoldEnsemble) else [network]
    return [(member, target_layer(member)) for member in members]


# ---------------------------------------------------------------- maps

def gradcam(network: nn.Module, inputs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(N, H, W) Grad-CAM maps of normalised (N, C, H, W) `inputs` for class `classes[i]` of each, upsampled
    bilinearly to the input's size; on the network's device, float32, non-negative.

    A fold ensemble gives the mean of its members' maps, each member's map first scaled to a maximum of 1 per cell:
    the ensemble weighs its members' probabilities equally, so their maps count equally too, whatever the size of
    each member's gradients. A single network's map is left unscaled (Grad-CAM's own values).
    """
    from captum.attr import LayerAttribution, LayerGradCam  # loads matplotlib: only where a map is drawn

    size = tuple(inputs.shape[-2:])
    maps = []
    # Gradients are needed whatever mode the caller is in (probabilities runs under inference_mode).
    with torch.inference_mode(False), torch.enable_grad():
        inputs = inputs.clone()
        for member, name in target_layers(network):
            cam = LayerGradCam(member, member.get_submodule(name))
            layer_map = cam.attribute(inputs, target=classes, relu_attributions=True).detach().float()
            maps.append(LayerAttribution.interpolate(layer_map, size, interpolate_mode="bilinear")[:, 0])
    if len(maps) == 1:
        return maps[0]
    return torch.stack([_scaled(m) for m in maps]).mean(dim=0)


def _scaled(maps: torch.Tensor) -> torch.Tensor:
    """Each (H, W) map of a (N, H, W) batch divided by its maximum; a blank (all-zero) map stays zero."""
    peak = maps.flatten(1).amax(dim=1).clamp_min(torch.finfo(maps.dtype).tiny)
    return maps / peak.view(-1, 1, 1)


# ---------------------------------------------------------------- the randomised network

@torch.no_grad()
def randomized_copy(network: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of `network` with every parameter, trained, fine-tuned or frozen (ImageNet) alike, randomised: the
    full model randomisation of Adebayo et al. (2018), not their cascading one.

    Every layer that can initialise itself (`reset_parameters`: convolutions, linear layers, normalisation layers,
    whose running statistics reset too) is re-initialised as torch builds it, from `seed`; a parameter no layer
    re-initialises (ConvNeXt's layer scale) has its entries shuffled, which keeps its scale and loses what it
    learned. The copy is in eval mode; the network and torch's global random state are left as they were.
    """
    device = next(network.parameters()).device
    # Drawn on the host from the CPU generator alone: the same weights on any device, and no CUDA state touched.
    copied = copy.deepcopy(network).cpu().eval()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        reset: set[int] = set()
        for module in copied.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
                reset |= {id(p) for p in module.parameters(recurse=False)}
        for param in copied.parameters():
            if id(param) not in reset:
                flat = param.view(-1)
                flat.copy_(flat[torch.randperm(flat.numel())])
    return copied.to(device)


# ---------------------------------------------------------------- which cells

@dataclass(frozen=True)
class Cell:
    """A chosen cell: its position in the images given, its true label (1 ALL), P(ALL) and the call at the
    threshold."""

    index: int
    label: int
    prob_all: float
    called: int

    @property
    def correct(self) -> bool:
        return self.label == self.called


def choose_cells(labels: np.ndarray, prob_all: np.ndarray, threshold: float = 0.5,
                 per_group: int = PER_GROUP) -> list[Cell]:
    """Up to `per_group` cells of each (true class, right or wrong) group, ALL before hem, right before wrong: the
    most confident calls of each group (right: the surest; wrong: the most confidently wrong). A cell is called ALL
    when P(ALL) >= `threshold`; ties go to the lower index, so the choice is deterministic."""
    labels = np.asarray(labels, dtype=np.int64)
    prob_all = np.asarray(prob_all, dtype=np.float64)
    if labels.shape != prob_all.shape:
        raise ValueError(f"labels and prob_all differ in shape: {labels.shape} and {prob_all.shape}")
    called = (prob_all >= threshold).astype(np.int64)
    confidence = np.where(called == 1, prob_all, 1.0 - prob_all)
    cells = []
    for label in (1, 0):
        for correct in (True, False):
            group = np.flatnonzero((labels == label) & ((called == labels) == correct))
            surest = group[np.lexsort((group, -confidence[group]))][:per_group]
            cells += [Cell(int(i), label, float(prob_all[i]), int(called[i])) for i in surest]
    return cells


# ---------------------------------------------------------------- the check

def rank_correlation(trained: np.ndarray, randomized: np.ndarray) -> float:
    """Spearman's rank correlation of two maps over their pixels (ties share their mean rank, as in
    `scipy.stats.spearmanr`). NaN when the trained map is constant (blank: no ranking to keep); 0.0 when only the
    randomised one is (it keeps none of the trained map's ranking)."""
    a: np.ndarray = np.ravel(trained).astype(np.float64)
    b: np.ndarray = np.ravel(randomized).astype(np.float64)
    if np.ptp(a) == 0:
        return float("nan")
    if np.ptp(b) == 0:
        return 0.0
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]


@dataclass(frozen=True)
class SaliencyReport:
    """The chosen cells as fed (uint8 (N, C, H, W)), their Grad-CAM maps from the trained and from the randomised
    network ((N, H, W), each scaled to a maximum of 1), the rank correlation of each pair (NaN for a blank trained
    map) and the verdict. When `passed` is false the maps must not be shown as explanations: only `reason` and the
    check's own figure, which is the evidence of the failure."""

    cells: list[Cell]
    images: np.ndarray
    maps: np.ndarray
    randomized_maps: np.ndarray
    correlations: np.ndarray
    passed: bool
    reason: str
    bound: float
    threshold: float
    layers: list[str]
    class_names: list[str]

    @property
    def median_correlation(self) -> float:
        return _nan_stat(np.median, self.correlations)

    @property
    def mean_correlation(self) -> float:
        return _nan_stat(np.mean, self.correlations)

    def summary(self) -> dict[str, Any]:
        """What a record keeps of the check (the numbers, the verdict, the cells), as plain JSON values."""
        return {"method": "Grad-CAM (captum LayerGradCam) of the called class, last convolutional stage",
                "layers": self.layers, "randomisation": "full: every parameter re-initialised",
                "passed": self.passed, "reason": self.reason, "bound": self.bound, "threshold": self.threshold,
                "median_rank_correlation": _json_float(self.median_correlation),
                "mean_rank_correlation": _json_float(self.mean_correlation),
                "cells": [{"index": c.index, "true": self.class_names[c.label], "prob_all": c.prob_all,
                           "called": self.class_names[c.called], "rank_correlation": _json_float(r)}
                          for c, r in zip(self.cells, self.correlations)]}


def _nan_stat(stat: Any, values: np.ndarray) -> float:
    kept = values[~np.isnan(values)]
    return float(stat(kept)) if len(kept) else float("nan")


def _json_float(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 4)


def saliency_report(model: TrainedModel, images: np.ndarray, labels: np.ndarray, prob_all: np.ndarray,
                    indices: np.ndarray | None = None, *, threshold: float | None = None,
                    per_group: int = PER_GROUP, bound: float = DEFAULT_BOUND, seed: int = 0) -> SaliencyReport:
    """Grad-CAM maps of a few right and wrong cells of each class and the model-randomisation check on them.

    `images` are uint8 (C, H, W) at the model's size and colour, as `probabilities` takes them (`indices` picks
    from a memory-mapped cache); `labels` and `prob_all` (P(ALL) from `probabilities`) go with `images[indices]`.
    The cells are chosen at `threshold` (the model's own by default), fed normalised as the model was trained, and
    each map explains the class the model called. The check passes when the median rank correlation between the
    trained and the randomised network's maps is below `bound`.
    """
    threshold = model.threshold if threshold is None else threshold
    chosen = np.arange(len(labels)) if indices is None else np.asarray(indices, dtype=np.int64)
    cells = choose_cells(labels, prob_all, threshold, per_group)
    pixels = np.asarray(images[chosen[[c.index for c in cells]]], dtype=np.uint8).reshape(
        len(cells), *images.shape[1:])
    _check_size(model, pixels)
    layers = [name for _, name in target_layers(model.network)]
    if isinstance(model.network, FoldEnsemble):
        layers = [f"members.{i}.{name}" for i, name in enumerate(layers)]
    if not cells:
        empty = np.zeros((0, *pixels.shape[-2:]), dtype=np.float32)
        return SaliencyReport([], pixels, empty, empty, np.zeros(0), False, "no cells to explain", bound, threshold,
                              layers, list(model.class_names))

    prep = model.preprocessing
    inputs = torch.from_numpy(Normalization(prep["mean"], prep["std"], channels=pixels.shape[1]).numpy(pixels))
    inputs = inputs.to(model.device)
    # Each map explains the class the model called, by its index in the network's output.
    index = {1: model.all_index, 0: model.class_names.index("hem")}
    classes = torch.tensor([index[c.called] for c in cells], device=model.device)
    maps = _scaled(gradcam(model.network, inputs, classes)).cpu().numpy()
    randomized = _scaled(gradcam(randomized_copy(model.network, seed), inputs, classes)).cpu().numpy()
    correlations = np.array([rank_correlation(a, b) for a, b in zip(maps, randomized)])
    passed, reason = _verdict(correlations, bound)
    return SaliencyReport(cells, pixels, maps, randomized, correlations, passed, reason, bound, threshold, layers,
                          list(model.class_names))


def _check_size(model: TrainedModel, pixels: np.ndarray) -> None:
    size = model.preprocessing["image_size"]
    if pixels.shape[-2:] != (size, size):
        raise ValueError(f"the images are {pixels.shape[-1]}x{pixels.shape[-2]} px and the model was trained on "
                         f"{size}x{size}: decode them with the model's preprocessing first")


def _verdict(correlations: np.ndarray, bound: float) -> tuple[bool, str]:
    blank = int(np.isnan(correlations).sum())
    kept = correlations[~np.isnan(correlations)]
    blanks = f"; {blank} cell(s) with a blank map left out" if blank else ""
    if not len(kept):
        return False, f"no cell has a map to check: every trained map is blank ({blank} cell(s))"
    median = float(np.median(kept))
    if median < bound:
        return True, (f"median rank correlation between the trained and the randomised network's maps is "
                      f"{median:.2f} < {bound} over {len(kept)} cell(s){blanks}: the maps depend on what the "
                      f"network learned")
    return False, (f"median rank correlation between the trained and the randomised network's maps is {median:.2f} "
                   f">= {bound} over {len(kept)} cell(s){blanks}: the maps hardly change when every weight is "
                   f"randomised, so they show the image rather than what the model learned; no map is shown")
