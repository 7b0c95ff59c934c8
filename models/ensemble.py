"""Several trained networks of one architecture as one classifier: the mean of their class probabilities.

A cross-validated trial leaves one network per fold; which of them to keep would be chosen on the same patients it
was scored on, so the trial's model is all of them, averaged. The output is log-probabilities, so everything that
applies a softmax to a network's output (the inference path, a serving stack) gets the averaged probabilities back.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["FoldEnsemble"]


class FoldEnsemble(nn.Module):
    """`members` (one per fold), each mapping images to class logits; forward gives log(mean softmax)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([torch.softmax(member(x).float(), dim=1) for member in self.members]).mean(dim=0)
        return torch.log(probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny))
