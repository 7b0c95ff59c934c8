"""How batches reach the model: the whole split resident on the training device, or torch's DataLoader.

`device` (airbench's way): the decoded uint8 split is copied to the device once per trial; each batch is gathered
by index there, rotated/flipped per sample with batched tensor ops, converted and normalised there. Nothing in an
epoch waits on the host: no DataLoader, no per-batch copy, no read-back. `loader`: the DataLoader over CellDataset,
for splits that do not fit. `auto` picks `device` when the split fits in a stated share of the device's free memory.
Both give the same augmentation distribution (each of the 4 or 8 rot90/flip variants equally likely per sample, or
every variant once when materialized) and are deterministic for a seed.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from leukotune.data.preprocess import AUGMENTATIONS, Normalization, apply_variants, augmentation_factor, variant_maps

PIPELINES = ("auto", "device", "loader")
# `auto` puts a split on a GPU when it takes at most this share of the memory free there at trial start: the rest
# is for weights, optimiser state, activations and the other trials packed on the same GPU.
DEVICE_MEMORY_SHARE = 0.25
# On CPU the split is copied into RAM (the loader reads the memory-mapped cache instead); the same share applies.
HOST_MEMORY_SHARE = 0.25
# The resident split is copied to the device in host chunks of at most this many bytes (copy_to_device).
COPY_CHUNK_BYTES = 64 * 2**20

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def free_memory_bytes(device: torch.device) -> int:
    """Memory free for a new tensor on `device`: the GPU's free memory, or the host's available RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def resolve_pipeline(setting: str, split_bytes: int, device: torch.device, free_bytes: int | None = None) -> str:
    """`device` or `loader` for `train.pipeline` (auto | device | loader), given the split's size in bytes."""
    if setting not in PIPELINES:
        raise ValueError(f"unknown pipeline {setting!r}; valid: {', '.join(PIPELINES)}")
    if setting != "auto":
        return setting
    free = free_memory_bytes(device) if free_bytes is None else free_bytes
    share = DEVICE_MEMORY_SHARE if device.type == "cuda" else HOST_MEMORY_SHARE
    return "device" if split_bytes <= share * free else "loader"


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def copy_to_device(images: np.ndarray, chosen: np.ndarray, device: torch.device,
                   chunk_bytes: int | None = None) -> torch.Tensor:
    """`images[chosen]` as one tensor on `device`, gathered and copied a chunk at a time.

    `images[chosen]` in one go would first make a full host copy of the split (about 2 GB for the paper study,
    per trial, four at once when packed trials start together on a 16 GiB node). Here the device tensor is
    allocated once and filled from host chunks of at most `chunk_bytes` (default COPY_CHUNK_BYTES).
    """
    chunk_bytes = chunk_bytes or COPY_CHUNK_BYTES
    per_image = int(np.prod(images.shape[1:], dtype=np.int64)) * images.itemsize
    out = torch.empty((len(chosen), *images.shape[1:]), dtype=_torch_dtype(images.dtype), device=device)
    step = max(1, chunk_bytes // max(per_image, 1))
    for start in range(0, len(chosen), step):
        part = torch.from_numpy(np.ascontiguousarray(images[chosen[start:start + step]]))
        # From pageable memory: once copy_ returns, the chunk has been read and can be dropped.
        out[start:start + len(part)].copy_(part)
    return out


class DeviceSplit:
    """One split resident on `device` as uint8, iterated as normalised (images, labels) batches made there.

    Training splits set `shuffle=True` and an `augment`; each epoch's order and variants come from a generator
    seeded by (seed, epoch) alone, so a resumed trial sees the epochs it would have seen, and every DDP rank draws
    the same permutation and keeps its own stride of it (the DistributedSampler's contract).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: Sequence[int] | np.ndarray,
                 mean: Sequence[float], std: Sequence[float], device: torch.device, batch_size: int, *,
                 augment: str = "none", materialize: bool = False, shuffle: bool = False, drop_last: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1, dtype: torch.dtype | None = None,
                 channels_last: bool | None = None) -> None:
        if augment != "none" and images.shape[2] != images.shape[3]:
            raise ValueError(f"rotation needs square images, got {images.shape[2]}x{images.shape[3]}")
        chosen = np.asarray(indices, dtype=np.int64)
        # One read of the cache and one host-to-device copy per trial; every batch after that is an index gather.
        self.images = copy_to_device(images, chosen, device)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)[chosen]).to(device)
        self.device, self.batch_size = device, batch_size
        self.augment, self.factor = augment, augmentation_factor(augment, materialize)
        self.materialize, self.shuffle, self.drop_last = materialize, shuffle, drop_last
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        # bf16 straight from uint8 on CUDA (autocast would cast the first conv's input to it anyway); fp32 on CPU.
        self.dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        # CellDataset's normalisation, made on the device: the same constants and roundings, so the values agree.
        self.normalization = Normalization(mean, std, channels=images.shape[1])
        # channels_last feeds cuDNN's NHWC kernels; on CPU it only adds copies. None: on CUDA only.
        channels_last = device.type == "cuda" if channels_last is None else channels_last
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._maps = variant_maps(self.images.shape[-1], device) if augment != "none" else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sources, variants) for this epoch and rank: which image and which rot90/flip variant, per position."""
        count = len(self.labels) * self.factor
        if count == 0:  # a DDP rank's validation shard of a set smaller than the world
            empty = torch.zeros(0, dtype=torch.int64, device=self.device)
            return empty, empty
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.shuffle:
            positions = torch.randperm(count, generator=generator, device=self.device)
        else:
            positions = torch.arange(count, device=self.device)
        sources, variants = positions % len(self.labels), positions // len(self.labels)
        if self.augment != "none" and not self.materialize:
            variants = torch.randint(0, AUGMENTATIONS[self.augment], (count,), generator=generator, device=self.device)
        if self.world_size > 1:
            # Equal shares, so every rank runs the same number of steps (DDP's all-reduce needs it).
            usable = count // self.world_size * self.world_size
            sources = sources[self.rank:usable:self.world_size]
            variants = variants[self.rank:usable:self.world_size]
        return sources, variants

    def __len__(self) -> int:
        count = len(self.labels) * self.factor // self.world_size
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sources, variants = self._order()
        for step in range(len(self)):
            window = slice(step * self.batch_size, (step + 1) * self.batch_size)
            yield self._batch(sources[window], variants[window])

    def _batch(self, sources: torch.Tensor, variants: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.images.index_select(0, sources)
        if self.augment != "none":
            images = apply_variants(images, variants, self._maps)
        pixels = self.normalization.tensor(images).to(self.dtype).contiguous(memory_format=self._memory_format)
        return pixels, self.labels.index_select(0, sources)


def on_device(batches: Batches, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) on `device` from either pipeline: a DeviceSplit's batches are there already."""
    if isinstance(batches, DeviceSplit):
        yield from batches
        return
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    for images, labels in batches:
        yield (images.to(device, non_blocking=True, memory_format=memory_format),
               labels.to(device, non_blocking=True))


def set_epoch(batches: Batches, epoch: int) -> None:
    """A new shuffle each epoch: DeviceSplit's own, or a DistributedSampler's under DDP."""
    if isinstance(batches, DeviceSplit):
        batches.set_epoch(epoch)
    elif isinstance(batches, DataLoader) and hasattr(batches.sampler, "set_epoch"):
        batches.sampler.set_epoch(epoch)
