"""Trial checkpoints: the training state and the best model so far, with a checksum manifest so a truncated or
corrupted copy is detected and never loaded."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from leukotune.models import get_model

STATE_FILE = "state.pt"
BEST_FILE = "best.pt"
MANIFEST_FILE = "checkpoint.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing files, truncated or fails its checksum: never loaded."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checkpoint(directory: Path, state: dict[str, Any], best: dict[str, Any] | None) -> None:
    """Write state (and the best model so far) plus a manifest of checksums, so a truncated copy is detected."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {STATE_FILE: state}
    if best is not None:
        files[BEST_FILE] = best
    sums = {}
    for name, payload in files.items():
        torch.save(payload, directory / name)
        sums[name] = _sha256(directory / name)
    (directory / MANIFEST_FILE).write_text(json.dumps({"sha256": sums, "epoch": state["epoch"]}))


def read_checkpoint_file(directory: Path, name: str) -> dict[str, Any]:
    """Load one checkpoint file after checking it against the manifest; only tensors and plain data (weights_only)."""
    manifest_path, path = directory / MANIFEST_FILE, directory / name
    if not manifest_path.is_file() or not path.is_file():
        raise CheckpointError(f"{directory}: incomplete checkpoint ({MANIFEST_FILE} or {name} missing)")
    try:
        expected = json.loads(manifest_path.read_text())["sha256"][name]
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({exc})") from exc
    if _sha256(path) != expected:
        raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupted); not loading it")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_best(checkpoint_dir: Path) -> dict[str, Any]:
    return read_checkpoint_file(Path(checkpoint_dir), BEST_FILE)


def load_history(checkpoint_dir: Path) -> list[dict[str, Any]]:
    return list(read_checkpoint_file(Path(checkpoint_dir), STATE_FILE).get("history", []))


def rebuild_model(best: dict[str, Any]):
    """The exact network of a best-epoch checkpoint."""
    return rebuild_network(best["model_name"], best["model_kwargs"], best["model"])


def rebuild_network(model_name: str, model_kwargs: dict[str, Any], state: dict[str, Any]):
    """Registry name + saved builder kwargs + a state dict, in eval mode (random init first, never a download)."""
    kwargs = dict(model_kwargs)
    if "weights" in kwargs:
        kwargs["weights"] = None  # the state dict carries every weight; never look for ImageNet files again
    model = get_model(model_name, **kwargs)
    model.load_state_dict(state)
    return model.eval()
