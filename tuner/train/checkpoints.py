"""Trial checkpoints: the training state and the best model so far, with a checksum manifest so a truncated or
corrupted copy is detected and never loaded.

Which file may be partial: `state.pt` (resume only) leaves out a frozen backbone's parameters, because the trial
that resumes rebuilds the network from the same ImageNet weights first (a digest of the frozen part, saved beside
it, proves they are the same). `best.pt` is always the whole network: export, test-side scoring, `promote` and
`predict` rebuild it with no weights file at hand (`models.rebuild_network`), possibly years later on another
machine.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leukotune.models import rebuild_network

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


def frozen_parameter_names(model: nn.Module) -> list[str]:
    """State-dict names of the parameters that never train (a frozen backbone's)."""
    return [name for name, param in model.named_parameters() if not param.requires_grad]


def frozen_digest(model: nn.Module) -> str | None:
    """SHA-256 of the frozen parameters' bytes in name order; None when everything trains."""
    params = dict(model.named_parameters())
    names = frozen_parameter_names(model)
    if not names:
        return None
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode())
        digest.update(params[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the frozen parameters, on the host: what training can change (buffers included)."""
    frozen = set(frozen_parameter_names(model))
    # Saved at once by the caller, so no clone: a host tensor is written before training touches it again.
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in frozen}


def load_trainable_state(model: nn.Module, state: dict[str, Any], digest: str | None) -> None:
    """Load a `state.pt` payload into `model`, which was built with its frozen weights already in place.

    `digest` is `frozen_digest` of `model` as built; a state saved over other frozen weights is refused (its
    head was trained on other features).
    """
    saved = state.get("frozen_sha256")
    if saved is None:  # a whole network (nothing frozen, or a checkpoint written before partial states)
        model.load_state_dict(state["model"])
        return
    if saved != digest:
        raise CheckpointError("the frozen backbone differs from the one this checkpoint was trained on "
                              "(other weights file?); its trainable part cannot be resumed on it")
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if unexpected or set(missing) != set(frozen_parameter_names(model)):
        raise CheckpointError(f"partial checkpoint does not fit the network: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}")


class _HashingWriter:
    """A file that hashes what is written to it: a checkpoint's checksum without reading the file back."""

    def __init__(self, handle) -> None:
        self.handle, self.digest = handle, hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def _save(path: Path, payload: dict[str, Any]) -> str:
    with open(path, "wb") as handle:
        writer = _HashingWriter(handle)
        torch.save(payload, writer)
    return writer.digest.hexdigest()


class CheckpointFolder:
    """One trial's checkpoint files in one local folder for the trial's life, handed to the session every epoch.

    `state.pt` is rewritten every epoch; `best.pt` only when the best epoch changes. The folder keeps the last
    `best.pt` in between, so every reported checkpoint still holds the best model, and the manifest always lists
    the checksums of both.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._sums: dict[str, str] = {}

    def write_best(self, best: dict[str, Any]) -> None:
        self._sums[BEST_FILE] = _save(self.directory / BEST_FILE, best)

    def copy_best(self, source: Path) -> None:
        """Take `best.pt` of a checkpoint being resumed, as it is (checked against its manifest, never unpickled)."""
        expected = _expected_sum(Path(source), BEST_FILE)
        shutil.copyfile(Path(source) / BEST_FILE, self.directory / BEST_FILE)
        actual = _sha256(self.directory / BEST_FILE)
        if actual != expected:
            (self.directory / BEST_FILE).unlink()
            raise CheckpointError(f"{Path(source) / BEST_FILE}: checksum mismatch (truncated or corrupted)")
        self._sums[BEST_FILE] = actual

    def write_state(self, state: dict[str, Any]) -> None:
        """Write `state.pt`, then the manifest (last, replaced in one rename: it is what marks the folder whole)."""
        self._sums[STATE_FILE] = _save(self.directory / STATE_FILE, state)
        manifest = self.directory / f".{MANIFEST_FILE}.tmp"
        manifest.write_text(json.dumps({"sha256": self._sums, "epoch": state["epoch"]}))
        os.replace(manifest, self.directory / MANIFEST_FILE)


def write_checkpoint(directory: Path, state: dict[str, Any], best: dict[str, Any] | None) -> None:
    """Write state (and the best model so far) plus a manifest of checksums, so a truncated copy is detected."""
    folder = CheckpointFolder(directory)
    if best is not None:
        folder.write_best(best)
    folder.write_state(state)


def _expected_sum(directory: Path, name: str) -> str:
    manifest_path, path = directory / MANIFEST_FILE, directory / name
    if not manifest_path.is_file() or not path.is_file():
        raise CheckpointError(f"{directory}: incomplete checkpoint ({MANIFEST_FILE} or {name} missing)")
    try:
        return json.loads(manifest_path.read_text())["sha256"][name]
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({exc})") from exc


def read_checkpoint_file(directory: Path, name: str) -> dict[str, Any]:
    """Load one checkpoint file after checking it against the manifest; only tensors and plain data (weights_only)."""
    path, expected = directory / name, _expected_sum(directory, name)
    if _sha256(path) != expected:
        raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupted); not loading it")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_best(checkpoint_dir: Path) -> dict[str, Any]:
    return read_checkpoint_file(Path(checkpoint_dir), BEST_FILE)


def load_history(checkpoint_dir: Path) -> list[dict[str, Any]]:
    return list(read_checkpoint_file(Path(checkpoint_dir), STATE_FILE).get("history", []))


def rebuild_model(best: dict[str, Any]) -> nn.Module:
    """The exact network of a best-epoch checkpoint (see `models.rebuild_network`)."""
    return rebuild_network(best["model_name"], best["model_kwargs"], best["model"],
                           ensemble_members=best.get("ensemble_members", 0))
