"""ImageNet weights for the transfer backbones: find a file on disk, check it, load it; fetch it on request.

Training nodes may have no internet, so ``weights="imagenet"`` means "torchvision's file, already here"; a study
never downloads. ``fetch_imagenet_weights`` (the `leukotune weights fetch` command) is the one place that does,
run by a person beforehand. The file name comes from torchvision's weight enums so it matches what ``torch.hub``
itself would cache, and carries the SHA-256 prefix the download is checked against.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import select
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.error import URLError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

import torch
from torch import nn

from .registry import UnknownModelError

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

__all__ = [
    "WEIGHTS_DIR_ENV",
    "WeightsDownloadError",
    "WeightsFileError",
    "WeightsNotFoundError",
    "arch_env_var",
    "default_weights_dir",
    "fetch_imagenet_weights",
    "imagenet_archs",
    "imagenet_normalization",
    "imagenet_weights",
    "load_backbone_weights",
    "load_state_dict_file",
    "resolve_weights_path",
]

WEIGHTS_DIR_ENV = "LEUKOTUNE_WEIGHTS_DIR"

# torchvision's best recipe for each (V2 where there is one; EfficientNet-B0 and ConvNeXt-Tiny have only V1); the
# file name and URL are read from the enum, not copied here.
# Named, not imported: torchvision loads on first use (about a second per process that never needs it).
_IMAGENET: dict[str, tuple[str, str]] = {
    "resnet50": ("ResNet50_Weights", "IMAGENET1K_V2"),
    "mobilenet_v2": ("MobileNet_V2_Weights", "IMAGENET1K_V2"),
    "efficientnet_b0": ("EfficientNet_B0_Weights", "IMAGENET1K_V1"),
    "efficientnet_b1": ("EfficientNet_B1_Weights", "IMAGENET1K_V2"),
    "convnext_tiny": ("ConvNeXt_Tiny_Weights", "IMAGENET1K_V1"),
}
# What every enum's transforms normalise with, as constants so registering the models needs no torchvision;
# tests/test_models_registry.py checks them against `imagenet_normalization` (read from torchvision) for every arch.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Checkpoints saved by training scripts often wrap the tensors under one of these keys.
_WRAPPER_KEYS = ("state_dict", "model")


class WeightsNotFoundError(FileNotFoundError):
    """The requested weights file is not on this machine; the message says where it looked and what to do."""


class WeightsFileError(ValueError):
    """A weights file exists but cannot be used (truncated, corrupt, not tensors, or the wrong architecture)."""


class WeightsDownloadError(RuntimeError):
    """`fetch_imagenet_weights` could not download a file, or refused what it got; nothing was kept."""


def imagenet_archs() -> list[str]:
    """Architectures with ImageNet weights (what `leukotune weights fetch` accepts)."""
    return sorted(_IMAGENET)


def imagenet_weights(arch: str) -> WeightsEnum:
    """torchvision's ImageNet weights entry for ``arch`` (its URL, file name and preprocessing)."""
    try:
        enum_name, member = _IMAGENET[arch]
    except KeyError:
        raise UnknownModelError(f"no ImageNet weights for {arch!r}; valid: {', '.join(sorted(_IMAGENET))}") from None
    import torchvision.models

    return getattr(getattr(torchvision.models, enum_name), member)


def imagenet_normalization(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std ``arch``'s ImageNet weights were trained with, as torchvision's transforms state them."""
    transform = imagenet_weights(arch).transforms()
    return tuple(transform.mean), tuple(transform.std)


def arch_env_var(arch: str) -> str:
    """Environment variable naming an explicit weights file for ``arch``, e.g. LEUKOTUNE_WEIGHTS_RESNET50."""
    return f"LEUKOTUNE_WEIGHTS_{arch.upper()}"


def _imagenet_candidates(arch: str) -> list[tuple[str, Path | None]]:
    """Places to look, in order, as (description, path or None when the env var is unset)."""
    file_name = Path(imagenet_weights(arch).url).name
    explicit, directory = os.environ.get(arch_env_var(arch)), os.environ.get(WEIGHTS_DIR_ENV)
    hub = Path(torch.hub.get_dir()) / "checkpoints" / file_name  # read at call time: honours TORCH_HOME
    return [
        (f"${arch_env_var(arch)}", Path(explicit).expanduser() if explicit else None),
        (f"${WEIGHTS_DIR_ENV}/{file_name}", Path(directory).expanduser() / file_name if directory else None),
        ("torch hub cache", hub),
    ]


def _not_found_message(arch: str, candidates: list[tuple[str, Path | None]]) -> str:
    url = imagenet_weights(arch).url
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    looked = "\n".join(
        f"  - {what}: {'not set' if path is None else f'{path} (missing)'}" for what, path in candidates
    )
    return (
        f"ImageNet weights for {arch} not found (a study never downloads). Looked in:\n{looked}\n"
        f"To provide them: run `leukotune weights fetch {arch}` where there is internet (it saves to {hub_dir}/, "
        f"or to ${WEIGHTS_DIR_ENV} when set), or download {url} and copy it to {hub_dir}/, "
        f"or set {arch_env_var(arch)}=/path/to/{Path(url).name}, or set {WEIGHTS_DIR_ENV} to a directory "
        f"holding it, or pass the file path as `weights` (--weights PATH)."
    )


def resolve_weights_path(arch: str, weights: str | os.PathLike[str] | None) -> Path | None:
    """The weights file that ``weights`` refers to for ``arch``, or None for random init.

    ``"imagenet"`` looks in ${LEUKOTUNE_WEIGHTS_<ARCH>}, then ${LEUKOTUNE_WEIGHTS_DIR}/<torchvision file name>,
    then <torch hub dir>/checkpoints/<torchvision file name>; any other value is a file path. Raises
    WeightsNotFoundError when nothing is there, so the tuner can call this before any trial starts.
    """
    imagenet_weights(arch)  # an unknown arch is an error even when no file is asked for
    if weights is None:
        return None
    if weights == "imagenet":
        candidates = _imagenet_candidates(arch)
        for _, path in candidates:
            if path is not None and path.is_file():
                return path
        raise WeightsNotFoundError(_not_found_message(arch, candidates))
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"weights file {path} for {arch} not found; pass an existing file, 'imagenet' or None"
        )
    return path


def _first_line(err: Exception) -> str:
    """torch's load errors run to a page of advice; the first line is enough beside ours."""
    return next(iter(str(err).splitlines()), "")


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict with ``weights_only=True`` (a weights file must not run code when unpickled)."""
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightsFileError(
            f"refusing to load {path}: it holds objects other than tensors, which weights_only=True does not "
            f"unpickle (torch's reason is chained below). Save weights as `torch.save(model.state_dict(), path)`."
        ) from err
    except Exception as err:  # torch reports truncation/corruption as RuntimeError, EOFError, KeyError, ...
        raise WeightsFileError(
            f"cannot read weights file {path} ({type(err).__name__}: {_first_line(err)}); "
            f"it is probably truncated or corrupt: copy it again"
        ) from err
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsFileError(f"{path} does not hold a state dict (a dict of tensor names to tensors)")
    return obj


def load_backbone_weights(backbone: nn.Module, arch: str, weights: str | os.PathLike[str] | None, *,
                          removed: str) -> Path | None:
    """Load ``weights`` into a torchvision ``arch`` whose ImageNet classifier (at dotted path ``removed``, e.g.
    "fc") was replaced; returns the file used.

    The file's keys under ``removed`` (the 1000-way classifier) are dropped and everything else must match exactly
    (strict=True): a partial load would silently leave random layers under a "pretrained" label.
    """
    path = resolve_weights_path(arch, weights)
    if path is None:
        return None
    state = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith(f"{removed}.")}
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsFileError(f"weights file {path} does not fit a {arch} backbone:\n{err}") from err
    return path


# --------------------------------------------------------------------------- fetching (run by a person, never a study)

def default_weights_dir() -> Path:
    """Where `fetch_imagenet_weights` saves by default: a folder `resolve_weights_path` searches."""
    directory = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(directory).expanduser() if directory else Path(torch.hub.get_dir()) / "checkpoints"


def fetch_imagenet_weights(arch: str, directory: Path | None = None, url: str | None = None,
                           progress: bool = True) -> tuple[Path, bool]:
    """Download ``arch``'s torchvision ImageNet file into ``directory``; returns (path, downloaded).

    ``url`` defaults to the one in torchvision's weight enum (a mirror may serve the same file name). The file's
    SHA-256 must start with the hash in its name, torch.hub's check; the download is written to a temporary file
    beside the target and moved into place only when the check passes, so an interrupted, stalled or refused
    download leaves nothing behind. A file already there with the right hash is kept as it is.
    """
    url = url or imagenet_weights(arch).url
    name = Path(urlparse(url).path).name
    expected = _hash_prefix(name)
    directory = Path(directory).expanduser() if directory else default_weights_dir()
    target = directory / name
    if target.is_file() and _sha256(target).startswith(expected):
        return target, False
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WeightsDownloadError(f"cannot create {directory}: {err.strerror or err}") from err
    _remove_stale_partials(target)
    partial = target.with_name(f"{target.name}.{uuid.uuid4().hex}.partial")  # torch.hub's name for it
    try:
        digest = _download(url, partial, progress)
        if not digest.startswith(expected):
            raise WeightsDownloadError(
                f"refused {url}: its SHA-256 does not start with {expected} as its name says (a download cut short, "
                f"or a different file); nothing was saved")
        partial.replace(target)
    except (URLError, http.client.HTTPException, OSError) as err:
        reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or err
        raise WeightsDownloadError(f"cannot download {url}: {reason}; nothing was saved") from err
    finally:
        partial.unlink(missing_ok=True)  # whatever ended it: a refusal, an error, Ctrl-C
    return target, True


# A server that sends nothing for this long is given up on. Waiting for data is cut into short polls, so the main
# thread is back in Python several times a second and Ctrl-C ends the command even while the server stalls, whichever
# of the process's threads (torch starts some) the kernel hands the signal to.
STALL_TIMEOUT_S = 60.0
POLL_S = 0.25
_CHUNK = 1 << 17  # larger than the response's read buffer: after the first read, every read goes to the socket


def _download(url: str, partial: Path, progress: bool) -> str:
    """Stream ``url`` into ``partial``; returns the SHA-256 of what arrived (of a short file if the server hung up)."""
    from tqdm import tqdm  # the progress bar torch.hub draws; loaded only when a person downloads

    digest = hashlib.sha256()
    with urlopen(Request(url, headers={"User-Agent": "torch.hub"}), timeout=STALL_TIMEOUT_S) as response, \
            partial.open("wb") as out, \
            tqdm(total=response.length, disable=not progress, unit="B", unit_scale=True, unit_divisor=1024) as bar:
        # Chunked bodies keep chunk headers in the response's buffer, where polling the socket cannot see them.
        poll = not response.chunked
        block = response.read1(_CHUNK)  # the first read returns what came with the headers, if anything
        while block:
            out.write(block)
            digest.update(block)
            bar.update(len(block))
            if response.length == 0:
                break  # all of a sized body is here; the server may keep the connection open
            if poll:
                _wait_for_data(response)
            block = response.read1(_CHUNK)
    return digest.hexdigest()


def _wait_for_data(response: http.client.HTTPResponse) -> None:
    """Return once the socket has data or was closed; TimeoutError after STALL_TIMEOUT_S of silence."""
    deadline = time.monotonic() + STALL_TIMEOUT_S
    while not select.select([response.fileno()], [], [], POLL_S)[0]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server sent nothing for {STALL_TIMEOUT_S:g} s")


def _hash_prefix(file_name: str) -> str:
    found = torch.hub.HASH_REGEX.search(file_name)
    if not found or not found.group(1):
        raise WeightsDownloadError(f"{file_name} carries no hash in its name (name-<sha256 prefix>.pth), so it "
                                   f"cannot be checked; refusing it")
    return found.group(1)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _remove_stale_partials(target: Path) -> None:
    """Temporary files a killed earlier download left (torch.hub names them `<target>.<uuid>.partial`)."""
    for stale in target.parent.glob(f"{target.name}.*.partial"):
        stale.unlink(missing_ok=True)
