"""A synthetic stand-in for C-NMC 2019, in its exact layout, for demos and tests where the real data is absent.

Each image is a 24-bit BMP of one purple-stained cell (dark textured nucleus inside a lighter cytoplasm ring, with
an irregular outline) on black, as segmented C-NMC cells are. It is built to be a fair, not an easy, benchmark:

* ALL cells are larger on average, with a coarser, higher-contrast nucleus texture and a fuller nucleus, but every
  one of these cues overlaps between the classes, so a small CNN stays well below 100%.
* Each subject has its own stain (hue, brightness) and its own size offset. Subjects are single-class, as in
  C-NMC, so a model can partly score by recognising subjects: an image-level split then reads higher than a
  subject-level one, which is the leak the subject split exists to prevent.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_synthetic_dataset"]

# Class means at 450 px (ALL=1, hem=0); real C-NMC cells cover 14-19% of the frame, a radius of about 95-110 px.
_RADIUS = {1: 104.0, 0: 92.0}
_RADIUS_CELL_SD = 0.11  # log-normal spread of one cell around its subject's mean
_RADIUS_SUBJECT_SD = 0.07
_NUCLEUS_FRACTION = {1: 0.86, 0: 0.80}  # blasts have scant cytoplasm
_TEXTURE_BLOBS = {1: 6.0, 0: 9.0}  # noise cells across the diameter: fewer = coarser chromatin
_TEXTURE_CONTRAST = {1: 0.17, 0: 0.12}
_NUCLEUS_RGB = np.array([66.0, 26.0, 80.0])  # mean foreground colour of the real sample
_CYTOPLASM_RGB = np.array([112.0, 62.0, 128.0])
# Calibrated with a 4-block CNN at 64 px on 24 subjects x 80 cells (20 epochs, rot90): about 80% accuracy on an
# image split against 65-70% on a subject split. Wider subject stains widen that gap; narrower ones close it.
_STAIN_SUBJECT_SD = {"brightness": 0.12, "hue": 0.12}
_STAIN_CELL_SD = 0.05
_HARMONICS = np.arange(2, 7)  # outline wobble: ellipse (k=2) up to small lobes (k=6)


@dataclass(frozen=True)
class _Subject:
    name: str
    label: int
    fold: int
    size_factor: float
    stain: np.ndarray  # per-channel multiplier


class _PolarGrid:
    """Distance and angle harmonics around the centre of a square window, computed once per image size."""

    def __init__(self, side: int) -> None:
        coords = np.arange(side, dtype=np.float32) - (side - 1) / 2.0
        dx, dy = np.meshgrid(coords, coords)
        theta = np.arctan2(dy, dx)
        self.side = side
        self.radius = np.hypot(dx, dy)
        self.cos = np.stack([np.cos(k * theta) for k in _HARMONICS])
        self.sin = np.stack([np.sin(k * theta) for k in _HARMONICS])

    def outline(self, half: int, mean_radius: float, amplitude: np.ndarray, phase: np.ndarray) -> np.ndarray:
        """Outline radius at every pixel's angle in the central (2*half)^2 window: a wobbly circle."""
        lo, hi = self.side // 2 - half, self.side // 2 + half
        cos_part = np.tensordot(amplitude * np.cos(phase), self.cos[:, lo:hi, lo:hi], axes=1)
        sin_part = np.tensordot(amplitude * np.sin(phase), self.sin[:, lo:hi, lo:hi], axes=1)
        return mean_radius * (1.0 + cos_part - sin_part)

    def distance(self, half: int) -> np.ndarray:
        lo, hi = self.side // 2 - half, self.side // 2 + half
        return self.radius[lo:hi, lo:hi]


def write_synthetic_dataset(out: str | os.PathLike[str], *, subjects: int = 12, cells_per_subject: int = 40,
                            seed: int = 0, size: int = 450, folds: int = 3) -> dict:
    """Write ``out/training_data/fold_<k>/{all,hem}/UID_...bmp``: about 2 ALL subjects per hem subject, subjects
    spread over `folds` with both classes in every fold when possible. Deterministic per `seed`."""
    if subjects < 2:
        raise ValueError(f"subjects must be at least 2 (one per class), got {subjects}")
    if cells_per_subject < 1 or folds < 1:
        raise ValueError(f"cells_per_subject and folds must be at least 1, got {cells_per_subject} and {folds}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    root = Path(out).expanduser()
    cohort = _make_subjects(subjects, folds, seed)
    grid = _PolarGrid(size)
    counts = {"all": 0, "hem": 0}
    per_fold = {str(f): 0 for f in range(folds)}
    for index, subject in enumerate(cohort):
        class_name = "all" if subject.label == 1 else "hem"
        folder = root / "training_data" / f"fold_{subject.fold}" / class_name
        folder.mkdir(parents=True, exist_ok=True)
        for cell in range(cells_per_subject):
            rng = np.random.default_rng([seed, 1, index, cell])
            pixels = _render_cell(grid, subject, rng)
            # C-NMC numbers cells within a microscope image: about three per image here.
            name = f"UID_{subject.name}_{cell // 3 + 1}_{cell % 3 + 1}_{class_name}.bmp"
            Image.fromarray(pixels, "RGB").save(folder / name, format="BMP")
        counts[class_name] += cells_per_subject
        per_fold[str(subject.fold)] += cells_per_subject
    return {
        "root": str(root), "cells": sum(counts.values()), **counts, "subjects": len(cohort),
        "subjects_all": sum(s.label == 1 for s in cohort), "subjects_hem": sum(s.label == 0 for s in cohort),
        "folds": per_fold, "size": size, "seed": seed,
    }


def _make_subjects(count: int, folds: int, seed: int) -> list[_Subject]:
    """About 2:1 ALL:hem subjects (as in C-NMC), dealt round-robin into folds per class so folds hold both."""
    rng = np.random.default_rng([seed, 0])
    # At least two subjects per class once there are four, so the default subject split has both on each side.
    least = 2 if count >= 4 else 1
    n_all = min(max(round(count * 2 / 3), least), count - least)
    cohort = []
    for label, n, prefix in ((1, n_all, ""), (0, count - n_all, "H")):
        # Real IDs are sparse numbers; numbering both classes from 1 also gives "3" and "H3", two different people.
        first_fold = int(rng.integers(folds))
        for i in range(n):
            brightness = np.exp(rng.normal(0.0, _STAIN_SUBJECT_SD["brightness"]))
            hue = np.exp(rng.normal(0.0, _STAIN_SUBJECT_SD["hue"]))
            stain = brightness * np.array([hue, 1.0, 1.0 / hue])  # shifts red against blue: pinker or bluer
            cohort.append(_Subject(name=f"{prefix}{i + 1}", label=label, fold=(first_fold + i) % folds,
                                   size_factor=float(np.exp(rng.normal(0.0, _RADIUS_SUBJECT_SD))), stain=stain))
    return cohort


def _smooth_noise(rng: np.random.Generator, blobs: float, side: int) -> np.ndarray:
    """Zero-mean, unit-std smooth noise of `side`^2 pixels with about `blobs` features across it."""
    cells = max(2, int(round(blobs)))
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    noise = np.asarray(Image.fromarray(coarse, mode="F").resize((side, side), Image.Resampling.BICUBIC))
    return (noise - noise.mean()) / (noise.std() + 1e-6)


def _render_cell(grid: _PolarGrid, subject: _Subject, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 image: a stained cell at a random position on black."""
    size = grid.side
    scale = size / 450.0
    label = subject.label
    radius = _RADIUS[label] * scale * subject.size_factor * np.exp(rng.normal(0.0, _RADIUS_CELL_SD))
    radius = float(np.clip(radius, 0.12 * size, 0.36 * size))
    amplitude = rng.uniform(0.0, 0.06, len(_HARMONICS)) / np.sqrt(_HARMONICS - 1.0)
    half = min(size // 2, int(np.ceil(radius * (1.0 + amplitude.sum()))) + 2)
    outline = grid.outline(half, radius, amplitude, rng.uniform(0, 2 * np.pi, len(_HARMONICS)))
    nucleus_fraction = np.clip(_NUCLEUS_FRACTION[label] + rng.normal(0.0, 0.05), 0.6, 0.95)
    nucleus = grid.outline(half, radius * nucleus_fraction, amplitude * 0.7, rng.uniform(0, 2 * np.pi, len(_HARMONICS)))
    distance = grid.distance(half)
    inside, in_nucleus = distance < outline, distance < nucleus

    side = 2 * half
    blobs = _TEXTURE_BLOBS[label] * np.exp(rng.normal(0.0, 0.25))
    contrast = _TEXTURE_CONTRAST[label] * np.exp(rng.normal(0.0, 0.25))
    chromatin = 1.0 + contrast * _smooth_noise(rng, blobs, side)
    grain = 1.0 + 0.04 * rng.standard_normal((side, side)).astype(np.float32)
    # The membrane stains darker: the last 15% of the radius fades by up to 20%.
    rim = 1.0 - 0.2 * np.clip((distance / outline - 0.85) / 0.15, 0.0, 1.0)
    shade = np.where(in_nucleus, chromatin, 1.0 + 0.05 * chromatin) * grain * rim
    stain = subject.stain * np.exp(rng.normal(0.0, _STAIN_CELL_SD, 3))
    colour = np.where(in_nucleus[..., None], _NUCLEUS_RGB, _CYTOPLASM_RGB) * stain
    crop = np.where(inside[..., None], np.clip(colour * shade[..., None], 4, 255), 0).astype(np.uint8)

    image = np.zeros((size, size, 3), dtype=np.uint8)
    room = size // 2 - half  # the cell wanders but never leaves the frame
    top, left = (size // 2 - half + rng.integers(-room, room + 1, 2)) if room > 0 else (0, 0)
    image[top:top + side, left:left + side] = crop
    return image
