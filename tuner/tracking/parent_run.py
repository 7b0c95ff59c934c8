"""The study's parent run: what was asked (config, space, data, code), and at the end what was found."""
from __future__ import annotations

import warnings
from typing import Any, Callable

import matplotlib.pyplot as plt
import optuna
import pandas as pd
from matplotlib.figure import Figure
from optuna.visualization import matplotlib as ovm
from ray.tune.search.optuna import OptunaSearch

from leukotune.tuner.compat import optuna_study_of
from leukotune.tuner.metrics import metric_on_test, ranking_key
from leukotune.tuner.preflight import DataSummary
from leukotune.tuner.tracking.client import (
    TAG_CODE_VERSION,
    TAG_FINGERPRINT,
    TAG_KIND,
    TAG_STUDY,
    Tracker,
    code_version,
    with_retries,
)
from leukotune.tuner.tracking.datasets import log_dataset_inputs, study_dataset_inputs

LEADERBOARD_TABLE = "leaderboard_table.json"
TAG_BEST_TRIAL = "leukotune.best_trial_id"
TAG_EXTENDED = "leukotune.extended"  # trials before and after each extension (`leukotune tune --resume`)
WARM_START_ARTIFACT = "warm_start.json"


def open_parent(tracker: Tracker, plan) -> str:
    """Reuse the study's parent run on resume (found by study id), else create and describe it."""
    found = tracker.find_runs(f"tags.`{TAG_STUDY}` = '{plan.study_id}' and tags.`{TAG_KIND}` = 'study'")
    if found:
        run_id = found[0].info.run_id
        tracker.client.update_run(run_id, "RUNNING")
        return run_id
    data = plan.data_summary
    tags = {TAG_STUDY: plan.study_id, TAG_KIND: "study", TAG_CODE_VERSION: code_version(),
            TAG_FINGERPRINT: data.fingerprint, "mlflow.note.content": describe(plan)}
    run_id = tracker.create_run(plan.study_id, tags)
    synthetic = None if plan.study.data.path else plan.study.data.synthetic.to_dict()
    log_dataset_inputs(tracker, run_id, study_dataset_inputs(data, plan.study.data.split, synthetic))
    tracker.log_params(run_id, {"study": plan.study.to_dict()})
    tracker.log_json(run_id, plan.study.to_dict(), "config/resolved.json")
    tracker.log_json(run_id, plan.space, "config/search_space.json")
    tracker.log_json(run_id, data.to_dict(), "data/summary.json")
    log_split(tracker, run_id, data)
    tracker.log_metrics(run_id, {"data_cells": data.cells, "data_subjects": data.subjects,
                                 "data_skipped_files": len(data.skipped)}, step=0)
    if plan.warm_start is not None:  # where the study started from (tuner/tune/warm_start.py)
        tracker.set_tags(run_id, plan.warm_start.tags())
        tracker.log_json(run_id, plan.warm_start.record(), WARM_START_ARTIFACT)
    return run_id


def record_extension(tracker: Tracker, run_id: str, plan) -> None:
    """An extended study's parent run: each extension as a tag (`2 -> 4`, appended), and the config it now runs
    with. Params are write-once in MLflow, so the `study.*` params keep the budget the study started with."""
    run = with_retries(lambda: tracker.client.get_run(run_id), "read run", log=tracker.log)
    step = f"{plan.extends_from} -> {plan.study.tune.num_samples}"
    earlier = run.data.tags.get(TAG_EXTENDED)
    tracker.set_tags(run_id, {TAG_EXTENDED: f"{earlier}, {step}" if earlier else step})
    tracker.log_json(run_id, plan.study.to_dict(), "config/resolved.json")


def log_split(tracker: Tracker, run_id: str, data: DataSummary) -> None:
    """Which subjects are on each side (`data/split.json`) and the cells per side and class as params, so a reader
    can check that no test patient was trained on."""
    tracker.log_json(run_id, data.split_subjects, "data/split.json")
    counts = {f"data.{side}_{name}_cells": n for side in ("train", "val", "test")
              for name, n in data.split.get(side, {}).items()}
    counts |= {f"data.{side}_subjects": len(subjects) for side, subjects in data.split_subjects.items()}
    tracker.log_params(run_id, {**counts, "data.split_method": data.split_method,
                                "data.test_source": data.test_source})


def describe(plan) -> str:
    data = plan.data_summary
    source = "synthetic stand-in" if data.synthetic else data.root
    return (f"leukotune study {plan.study_id}: {plan.study.tune.num_samples} trials, "
            f"{plan.study.data.split} split, metric {plan.study.tune.metric}. Data: {source}, {data.cells} "
            f"cells of {data.subjects} subjects ({len(data.skipped)} files skipped).")


def log_study_end(tracker: Tracker, run_id: str, plan, leaderboard: list[dict[str, Any]], complete: bool) -> None:
    tracker.log_json(run_id, leaderboard, "leaderboard.json")
    metric, mode = plan.study.tune.metric, plan.study.tune.mode
    ranked = rank_rows(leaderboard, mode)
    if ranked:
        log_leaderboard_table(tracker, run_id, leaderboard_frame(ranked, metric))
    if ranked and not ranking_key(ranked[0].get("best"), mode)[0]:
        log_winner(tracker, run_id, ranked[0], metric, len(leaderboard), complete)
    if complete:
        log_optuna_plots(tracker, run_id, plan)


def rank_rows(leaderboard: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Best first; trials without a value last, then by trial id so two calls agree."""
    return sorted(leaderboard, key=lambda row: (*ranking_key(row.get("best"), mode), row["trial_id"]))


def leaderboard_frame(ranked: list[dict[str, Any]], metric: str) -> pd.DataFrame:
    """One row per trial: rank, trial, status, epochs, the device it trained on, the study metric, its test score,
    then every parameter."""
    params = sorted({key for row in ranked for key in row.get("config", {})})
    rows = [{"rank": rank, "trial": row["trial_id"], "status": row["status"], "epochs": row.get("epochs"),
             "device": row.get("device"), f"best_{metric}": row.get("best"),
             # a cross-validated study's spread over the folds beside the fold mean
             **({f"best_{metric}_std": row.get("best_std")} if any(r.get("best_std") is not None for r in ranked)
                else {}),
             # the top trials' test scores beside validation (a study without a test side has no such column)
             **({metric_on_test(metric): row.get("test")} if any("test" in r for r in ranked) else {}),
             **{key: row.get("config", {}).get(key) for key in params}}
            for rank, row in enumerate(ranked, start=1)]
    return pd.DataFrame(rows)


def log_leaderboard_table(tracker: Tracker, run_id: str, frame: pd.DataFrame) -> None:
    """The leaderboard as an MLflow table (`mlflow.load_table` reads it; the UI lists it as a table)."""
    existing = {a.path for a in tracker.client.list_artifacts(run_id)}
    if LEADERBOARD_TABLE in existing:
        # A resumed study: log_table would append to the earlier rows; write the same table format over them.
        tracker.log_text(run_id, frame.to_json(orient="split", index=False), LEADERBOARD_TABLE)
        return
    with_retries(lambda: tracker.client.log_table(run_id, frame, LEADERBOARD_TABLE), "log table", log=tracker.log)


def log_winner(tracker: Tracker, run_id: str, winner: dict[str, Any], metric: str, trials: int,
               complete: bool) -> None:
    """The best trial's metric and parameters on the study run itself, under the trials' own column names, so the
    runs table sorts studies by them. Params are write-once in MLflow: they are set when the study completes."""
    tracker.log_metrics(run_id, {f"best_{metric}": winner["best"], "trials": trials}, step=0)
    tracker.set_tags(run_id, {TAG_BEST_TRIAL: winner["trial_id"]})
    if complete:
        tracker.log_params(run_id, dict(winner.get("config", {})))


def log_optuna_plots(tracker: Tracker, run_id: str, plan) -> None:
    """Optimisation history, parameter importances and parallel coordinates from the study's Optuna storage."""
    with warnings.catch_warnings():
        # Optuna flags its plots and importances experimental, and says when a study is too small for its importance
        # evaluator to tell parameters apart: nothing a user can act on, in every study's log.
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Target and region quantiles")
        study = load_optuna_study(plan.directory)
        for name, figure in optuna_figures(study, plan.study.tune.metric, log=tracker.log).items():
            tracker.log_figure(run_id, figure, f"optuna/{name}.png")
            plt.close(figure)


def optuna_figures(study: optuna.Study, metric: str, log: Callable[[str], None] = print) -> dict[str, Figure]:
    """Optuna's matplotlib plots, named for the study metric and sized so every label stays inside the picture."""
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots = {"optimization_history": ovm.plot_optimization_history, "parallel_coordinate": ovm.plot_parallel_coordinate}
    if len(completed) >= 2:
        plots["param_importances"] = ovm.plot_param_importances
    figures = {}
    for name, plot in plots.items():
        try:
            axes = plot(study, target_name=metric)
        except (ValueError, RuntimeError) as exc:  # e.g. importances need two distinct values per parameter
            log(f"Optuna plot {name} skipped: {exc}")
            continue
        figures[name] = fit_optuna_figure(axes.figure if hasattr(axes, "figure") else axes.flat[0].figure, study)
    return figures


def fit_optuna_figure(figure: Figure, study: optuna.Study) -> Figure:
    """Optuna draws at matplotlib's default 6.4x4.8 in without a layout pass, which cuts long parameter names
    (`onv_layers`): widen by the number of parameters (parallel coordinates has one axis each), then lay out."""
    params = {name for trial in study.trials for name in trial.params}
    figure.set_size_inches(max(7.0, 0.9 * len(params) + 2.5), max(4.8, 0.35 * len(params) + 2.0))
    figure.tight_layout()
    return figure


def load_optuna_study(experiment_dir):
    """The Optuna study as Tune last checkpointed it with the searcher (written at the end of every study)."""
    searcher = OptunaSearch()
    searcher.restore_from_dir(str(experiment_dir))
    return optuna_study_of(searcher)


def close_parent(tracker: Tracker, run_id: str, complete: bool) -> None:
    tracker.end_run(run_id, "FINISHED" if complete else "KILLED")
