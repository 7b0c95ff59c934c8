"""The study's parent run: what was asked (config, space, data, code), and at the end what was found."""
from __future__ import annotations

import warnings
from typing import Any

import matplotlib.pyplot as plt
import optuna
from optuna.visualization import matplotlib as ovm
from ray.tune.search.optuna import OptunaSearch

from leukotune.tuner.metrics import ranking_key
from leukotune.tuner.tracking.client import TAG_FINGERPRINT, TAG_KIND, TAG_STUDY, Tracker, code_version


def open_parent(tracker: Tracker, plan) -> str:
    """Reuse the study's parent run on resume (found by study id), else create and describe it."""
    found = tracker.find_runs(f"tags.`{TAG_STUDY}` = '{plan.study_id}' and tags.`{TAG_KIND}` = 'study'")
    if found:
        run_id = found[0].info.run_id
        tracker.client.update_run(run_id, "RUNNING")
        return run_id
    data = plan.data_summary
    tags = {TAG_STUDY: plan.study_id, TAG_KIND: "study", "leukotune.code_version": code_version(),
            TAG_FINGERPRINT: data.get("fingerprint", ""), "mlflow.note.content": describe(plan)}
    run_id = tracker.create_run(plan.study_id, tags)
    tracker.log_params(run_id, {"study": plan.study.to_dict()})
    tracker.log_json(run_id, plan.study.to_dict(), "config/resolved.json")
    tracker.log_json(run_id, plan.space, "config/search_space.json")
    tracker.log_json(run_id, data, "data/summary.json")
    tracker.log_metrics(run_id, {"data_cells": data.get("cells", 0), "data_subjects": data.get("subjects", 0),
                                 "data_skipped_files": len(data.get("skipped", []))}, step=0)
    return run_id


def describe(plan) -> str:
    data = plan.data_summary
    source = "synthetic stand-in" if data.get("synthetic") else data.get("root")
    return (f"leukotune study {plan.study_id}: {plan.study.tune.num_samples} trials, "
            f"{plan.study.data.split} split, metric {plan.study.tune.metric}. Data: {source}, {data.get('cells')} "
            f"cells of {data.get('subjects')} subjects ({len(data.get('skipped', []))} files skipped).")


def log_study_end(tracker: Tracker, run_id: str, plan, leaderboard: list[dict[str, Any]], complete: bool) -> None:
    tracker.log_json(run_id, leaderboard, "leaderboard.json")
    mode = plan.study.tune.mode
    values = sorted((row["best"] for row in leaderboard if not ranking_key(row.get("best"), mode)[0]),
                    key=lambda value: ranking_key(value, mode))
    if values:
        best = values[0]
        tracker.log_metrics(run_id, {f"best_{plan.study.tune.metric}": best, "trials": len(leaderboard)}, step=0)
    if complete:
        log_optuna_plots(tracker, run_id, plan)


def log_optuna_plots(tracker: Tracker, run_id: str, plan) -> None:
    """Optimisation history, parameter importances and parallel coordinates from the study's Optuna storage."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Target and region quantiles")

    study = load_optuna_study(plan.directory)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots = {"optimization_history": ovm.plot_optimization_history, "parallel_coordinate": ovm.plot_parallel_coordinate}
    if len(completed) >= 2:
        plots["param_importances"] = ovm.plot_param_importances
    for name, plot in plots.items():
        try:
            axes = plot(study)
        except (ValueError, RuntimeError) as exc:  # e.g. importances need two distinct values per parameter
            tracker.log(f"Optuna plot {name} skipped: {exc}")
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        tracker.log_figure(run_id, figure, f"optuna/{name}.png")
        plt.close(figure)


def load_optuna_study(experiment_dir):
    """The Optuna study as Tune last checkpointed it with the searcher (written at the end of every study)."""
    searcher = OptunaSearch()
    searcher.restore_from_dir(str(experiment_dir))
    return searcher._ot_study  # OptunaSearch keeps the study private; this is its only handle


def close_parent(tracker: Tracker, run_id: str, complete: bool) -> None:
    tracker.end_run(run_id, "FINISHED" if complete else "KILLED")
