"""What a finished trial leaves in MLflow besides numbers: the model, a confusion matrix and learning curves."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mlflow.pytorch
import numpy as np
import torch
from mlflow.models import infer_signature

from leukotune.models import get_model
from leukotune.tuner.metrics import CLASS_NAMES, confusion_from_metrics
from leukotune.tuner.tracking.client import with_retries
from leukotune.tuner.train.checkpoints import BEST_FILE, STATE_FILE, read_checkpoint_file

# Exact pins so a served model rebuilds with the versions it was trained with; also skips pip inference (slow).
MODEL_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "numpy", "pillow"]


def load_best(checkpoint_dir: Path) -> dict[str, Any]:
    return read_checkpoint_file(Path(checkpoint_dir), BEST_FILE)


def load_history(checkpoint_dir: Path) -> list[dict[str, Any]]:
    return list(read_checkpoint_file(Path(checkpoint_dir), STATE_FILE).get("history", []))


def rebuild_model(best: dict[str, Any]):
    """The exact network of a checkpoint: registry name + saved builder kwargs + weights (random init, no download)."""
    kwargs = dict(best["model_kwargs"])
    if "weights" in kwargs:
        kwargs["weights"] = None  # the checkpoint carries every weight; never look for ImageNet files again
    model = get_model(best["model_name"], **kwargs)
    model.load_state_dict(best["model"])
    return model.eval()


def confusion_figure(cm: np.ndarray, title: str):
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(cm, cmap="Blues")
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, str(count), ha="center", va="center", color="black")
    ax.set_xticks([0, 1], CLASS_NAMES)
    ax.set_yticks([0, 1], CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def curves_figure(history: list[dict[str, Any]], metric: str):
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(7, 3))
    for key in ("train_loss", "val_loss"):
        loss_ax.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key)
    for key in ("train_accuracy", "val_accuracy", metric):
        metric_ax.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key)
    for ax in (loss_ax, metric_ax):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def log_trial_artifacts(tracker, run_id: str, checkpoint_dir: Path, metric: str, log_model: bool) -> str | None:
    """Confusion matrix and curves as images, the best model as an MLflow PyTorch model; returns the model URI."""
    best = load_best(checkpoint_dir)
    history = load_history(checkpoint_dir)
    cm = confusion_from_metrics(best["metrics"])
    for figure, name in ((confusion_figure(cm, f"best epoch {best['epoch']}"), "plots/confusion_matrix.png"),
                         (curves_figure(history, metric), "plots/learning_curves.png")):
        tracker.log_figure(run_id, figure, name)
        plt.close(figure)
    tracker.log_json(run_id, {"best_epoch": best["epoch"], "metrics": best["metrics"],
                              "preprocessing": best["preprocessing"]}, "best_epoch.json")
    tracker.log_json(run_id, best["config"], "config/resolved.json")
    if not log_model:
        return None
    return log_pytorch_model(tracker, run_id, best)


STATE_DICT_FILE = "state_dict.pt"


def log_pytorch_model(tracker, run_id: str, best: dict[str, Any]) -> str:
    """Log the model (signature, input example, trained-with preprocessing as metadata) at `runs:/<id>/model`.

    A plain state dict rides along as an extra file so `leukotune predict` can rebuild the network from the
    registry and load weights with `weights_only=True`, never unpickling a module from a server.
    """

    model = rebuild_model(best)
    prep = best["preprocessing"]
    channels = 1 if prep["color"] == "gray" else 3
    # Two images, not one: MLflow exports the model with torch.export, which would pin a batch of 1.
    example = np.zeros((2, channels, prep["image_size"], prep["image_size"]), dtype=np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    metadata = {"leukotune": {"preprocessing": prep, "model_name": best["model_name"],
                              "model_kwargs": best["model_kwargs"], "best_epoch": best["epoch"],
                              "class_names": ["hem", "all"], "state_dict": f"extra_files/{STATE_DICT_FILE}"}}
    with tempfile.TemporaryDirectory(prefix="leukotune-model-") as tmp:
        weights = Path(tmp) / STATE_DICT_FILE
        torch.save(model.state_dict(), weights)
        target = Path(tmp) / "model"
        mlflow.pytorch.save_model(model, str(target), signature=infer_signature(example, output),
                                  input_example=example, metadata=metadata, extra_files=[str(weights)],
                                  pip_requirements=MODEL_REQUIREMENTS)
        with_retries(lambda: tracker.client.log_artifacts(run_id, str(target), "model"), "log model", log=tracker.log)
    return f"runs:/{run_id}/model"
