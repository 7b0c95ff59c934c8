"""What a finished trial leaves in MLflow besides numbers: a confusion matrix, learning curves, and (for the
study's top trials) the model as an MLflow 3 LoggedModel."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.models import Model

from leukotune.tuner.metrics import CLASS_NAMES, confusion_from_metrics
from leukotune.tuner.serving.image_model import DEFAULT_TEMPERATURE, DEFAULT_THRESHOLD, save_image_model
from leukotune.tuner.tracking.client import with_retries
from leukotune.tuner.train.checkpoints import load_best, load_history, rebuild_model

# Exact pins so a served model rebuilds with the versions it was trained with; also skips pip inference (slow).
# leukotune itself is not on an index: the model's code is the installed package (`--env-manager local`).
MODEL_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "numpy", "pillow"]
FIGURE_DPI = 100


# Every trial draws two figures in the driver's background thread, so they are drawn cheaply: on their own Agg
# canvas (no pyplot state shared with other threads), with fixed margins instead of `tight_layout` (which lays
# every text out twice and was most of a one-second trial's driver cost). tests/test_tracking_figures.py checks
# that every label still fits the picture.
def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=FIGURE_DPI)
    FigureCanvasAgg(figure)
    return figure


def confusion_figure(cm: np.ndarray, title: str) -> Figure:
    """Counts per (true, predicted) class; `title` names the trial, the split and the epoch."""
    fig = new_figure(3.8, 3.6)
    ax = fig.add_subplot()
    fig.subplots_adjust(left=0.2, right=0.95, bottom=0.14, top=0.84)
    ax.imshow(cm, cmap="Blues")
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, str(count), ha="center", va="center", color="black")
    ax.set_xticks([0, 1], CLASS_NAMES)
    ax.set_yticks([0, 1], CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return fig


def curves_figure(history: list[dict[str, Any]], metric: str, title: str = "learning curves") -> Figure:
    """Loss and accuracy per epoch on the train and val sides; `title` names the trial."""
    epochs = [h["epoch"] for h in history]
    fig = new_figure(7.5, 3.4)
    loss_ax, metric_ax = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.8, wspace=0.25)
    for key in ("train_loss", "val_loss"):
        loss_ax.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key)
    for key in ("train_accuracy", "val_accuracy", metric):
        metric_ax.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key)
    loss_ax.set_title("loss per epoch (train, val)", fontsize=9)
    metric_ax.set_title(f"accuracy and {metric} per epoch", fontsize=9)
    # Fixed corners, where curves usually leave room (loss falls, accuracy rises): "best" searches every line.
    for ax, corner in ((loss_ax, "upper right"), (metric_ax, "lower right")):
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
        ax.legend(fontsize=7, loc=corner)
    fig.suptitle(title, fontsize=10)
    return fig


def log_trial_artifacts(tracker, run_id: str, checkpoint_dir: Path, metric: str) -> None:
    """Confusion matrix and (from two epochs on) learning curves as images, the best epoch and resolved config as
    JSON: every trial, from the driver's background thread."""
    best = load_best(checkpoint_dir)
    history = load_history(checkpoint_dir)
    cm = confusion_from_metrics(best["metrics"])
    trial = with_retries(lambda: tracker.client.get_run(run_id), "read run", log=tracker.log).info.run_name
    figures = [(confusion_figure(cm, f"{trial}\nval split, best epoch {best['epoch']}"), "plots/confusion_matrix.png")]
    if len(history) >= 2:  # a curve needs two epochs; a one-epoch trial (stopped by ASHA at its first rung) has none
        figures.append((curves_figure(history, metric, f"{trial}: learning curves"), "plots/learning_curves.png"))
    for figure, name in figures:
        tracker.log_figure(run_id, figure, name)
    tracker.log_json(run_id, {"best_epoch": best["epoch"], "metrics": best["metrics"],
                              "preprocessing": best["preprocessing"]}, "best_epoch.json")
    tracker.log_json(run_id, best["config"], "config/resolved.json")


STATE_DICT_FILE = "state_dict.pt"
MODEL_TYPE = "leukotune-classifier"


def log_pytorch_model(tracker, run_id: str, best: dict[str, Any], name: str = "model",
                      tags: dict[str, str] | None = None, *, temperature: float = DEFAULT_TEMPERATURE,
                      threshold: float = DEFAULT_THRESHOLD) -> str:
    """Log the best epoch's network as a LoggedModel whose source is `run_id`; returns `models:/<model_id>`.

    The model is a pyfunc that takes cell images (tuner/serving/image_model.py): `mlflow models serve` serves it.
    Its MLmodel carries the image signature, a one-cell input example, and as metadata the trained-with
    preprocessing and the operating point (`temperature`, `threshold`: as trained until calibration fits them); a
    plain state dict is its artifact, so `leukotune predict` and the pyfunc rebuild the network from the registry
    and load weights with `weights_only=True`, never unpickling a module from a server. The client API, not the
    fluent `mlflow.pyfunc.log_model`: that one resolves the experiment and server from process globals, which a
    background thread of the driver must not rely on.
    """
    client = tracker.client
    params = {"model_name": best["model_name"], **{k: str(v) for k, v in best["model_kwargs"].items()}}
    logged = with_retries(lambda: client.create_logged_model(
        tracker.experiment_id, name=name, source_run_id=run_id, tags=tags, params=params, model_type=MODEL_TYPE),
        "create logged model", log=tracker.log)
    try:
        with tempfile.TemporaryDirectory(prefix="leukotune-model-") as tmp:
            target = save_model_files(best, logged, run_id, Path(tmp), temperature=temperature,
                                      threshold=threshold)
            with_retries(lambda: client.log_model_artifacts(logged.model_id, str(target)), "log model",
                         log=tracker.log)
        link_best_metrics(tracker, run_id, logged.model_id, best)
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    with_retries(lambda: client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY), "finalize model",
                 log=tracker.log)
    return f"models:/{logged.model_id}"


def save_model_files(best: dict[str, Any], logged, run_id: str, folder: Path, *,
                     temperature: float = DEFAULT_TEMPERATURE, threshold: float = DEFAULT_THRESHOLD) -> Path:
    """The MLflow model folder of `best` (the pyfunc that takes cell images), stamped with the LoggedModel's id,
    written under `folder`."""
    weights = folder / STATE_DICT_FILE
    torch.save(rebuild_model(best).state_dict(), weights)
    facts = {"preprocessing": best["preprocessing"], "model_name": best["model_name"],
             "model_kwargs": best["model_kwargs"], "best_epoch": best["epoch"], "class_names": ["hem", "all"],
             "ensemble_members": int(best.get("ensemble_members", 0)), "temperature": float(temperature),
             "threshold": float(threshold)}
    stamp = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id,
                  model_id=logged.model_id)
    return save_image_model(folder / "model", weights, facts, stamp, MODEL_REQUIREMENTS)


def link_best_metrics(tracker, run_id: str, model_id: str, best: dict[str, Any]) -> None:
    """The model is the run's output at its best epoch, and the run's metrics of that epoch are linked to it.

    As MLflow's own `Model.log` does: each value the run holds at that step is logged again with its own timestamp
    and `model_id`; MLflow stores the link and drops the repeat, so the run keeps one value per epoch.
    """
    step = int(best["epoch"])
    client = tracker.client
    keys = with_retries(lambda: client.get_run(run_id).data.metrics.keys(), "read run", log=tracker.log)
    history = [m for key in keys for m in with_retries(lambda key=key: client.get_metric_history(run_id, key),
                                                       "read metric history", log=tracker.log)]
    metrics = [Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id) for m in history if m.step == step]
    with_retries(lambda: client.log_outputs(run_id, [LoggedModelOutput(model_id, step=step)]), "link model",
                 log=tracker.log)
    with_retries(lambda: client.log_batch(run_id, metrics=metrics), "link model metrics", log=tracker.log)


RELIABILITY_FIGURE = "plots/reliability.png"


def reliability_figure(before: list[dict[str, float]], after: list[dict[str, float]], temperature: float,
                       title: str) -> Figure:
    """Reliability diagrams of one side as trained and calibrated: per bin of P(ALL) (`calibration.reliability`),
    the fraction of ALL cells against the mean P(ALL), with each bin's cell count; on the diagonal is calibrated."""
    fig = new_figure(7.5, 3.8)
    axes = fig.subplots(1, 2, sharey=True)
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.14, top=0.78, wspace=0.08)
    for ax, rows, name in ((axes[0], before, "as trained (T = 1)"),
                           (axes[1], after, f"calibrated (T = {temperature:.2f})")):
        filled = [r for r in rows if r["cells"]]
        total = sum(r["cells"] for r in rows) or 1
        ece = sum(r["cells"] / total * abs(r["mean_p_all"] - r["fraction_all"]) for r in filled)
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        ax.bar([(r["low"] + r["high"]) / 2 for r in filled], [r["fraction_all"] for r in filled],
               width=[0.9 * (r["high"] - r["low"]) for r in filled], color="#9ecae1", edgecolor="#3182bd",
               label="fraction ALL per bin")
        ax.plot([r["mean_p_all"] for r in filled], [r["fraction_all"] for r in filled], "o", color="#de2d26",
                markersize=4, label="at the bin's mean P(ALL)")
        for r in filled:
            ax.text((r["low"] + r["high"]) / 2, min(r["fraction_all"], 0.9) + 0.03, str(r["cells"]), ha="center",
                    fontsize=6)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("P(ALL)")
        ax.set_title(f"{name}: ECE {ece:.3f}", fontsize=9)
    axes[0].set_ylabel("fraction of cells that are ALL")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{title}\n(10 equal-width bins; numbers: cells per bin)", fontsize=9)
    return fig
