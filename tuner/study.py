"""`leukotune tune`: Ray Tune + Optuna (TPE) + ASHA over the study's space, every trial recorded in MLflow."""
from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from tuner.config import ConfigError, StudyConfig, TrainConfig, from_dict, replace_train, validate_study
from tuner.space import DEFAULT_SPACE, DefineByRun, SpaceError, check_space, sample_points

STUDY_FILE = "leukotune_study.json"


@dataclass
class StudyPlan:
    """Everything decided before Ray starts: ids, paths, the space, and the data that will be used."""

    study: StudyConfig
    study_id: str
    directory: Path
    space: dict[str, Any]
    resume: bool
    data_summary: dict[str, Any] = field(default_factory=dict)


def tune_trial(config: dict[str, Any], study_dict: dict[str, Any]) -> None:
    """One Tune trial: the study with this trial's sampled parameters, trained inline or via a nested TorchTrainer."""
    import torch
    from ray import tune

    study = replace_train(from_dict(StudyConfig, study_dict), config)
    quiet_ray_loggers()
    torch.set_num_threads(study.resources.cpus_per_worker)
    if runtime_of(study) == "ray_train":
        from tuner.raytrain import train_in_tune_trial

        context = tune.get_context()
        train_in_tune_trial(study, context.get_trial_id(), Path(study_dict["storage_path"]) / "train-runs")
        return
    from tuner.sessions import TuneSession
    from tuner.trial import run_training

    run_training(study, TuneSession(study.resources.use_gpu), log=lambda _msg: None)


def quiet_ray_loggers() -> None:
    # Ray logs every checkpoint it persists at INFO; the driver already prints one line per trial epoch.
    import logging

    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)


def reuse_actors(study: StudyConfig) -> bool:
    # An inline trial's actor is just a warm Python with torch imported: handing it to the next trial saves the
    # process start and imports (seconds per trial). A ray_train trial's actor holds nothing worth keeping.
    return runtime_of(study) == "inline"


def runtime_of(study: StudyConfig) -> str:
    runtime = study.resources.trial_runtime
    if runtime == "auto":
        return "ray_train" if study.resources.workers > 1 else "inline"
    return runtime


# ---------------------------------------------------------------- checks before anything starts

def check_search_space(study: StudyConfig, draws: int = 64) -> dict[str, Any]:
    """Validate the space's shape, then draw points offline and build each config: refuse what cannot be sampled."""
    space = study.tune.space or DEFAULT_SPACE
    try:
        check_space(space, {f.name for f in fields(TrainConfig)})
        points = sample_points(space, dict(study.train.__dict__), draws, seed=study.tune.seed) + list(study.tune.points_to_evaluate)
    except SpaceError as exc:
        raise ConfigError(str(exc)) from exc
    for point in points:
        try:
            validate_study(replace_train(study, point))
        except ConfigError as exc:
            raise ConfigError(f"tune.space can produce an unusable trial {point}: {exc}") from exc
    return space


def check_storage(directory: Path, min_free_gb: float = 1.0) -> None:
    """Fail at start, not after an hour, when checkpoints could not be written."""
    probe = directory / ".write-test"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"storage_path {directory} is not writable: {exc.strerror or exc}") from exc
    free_gb = _free_gb(directory)
    if free_gb < min_free_gb:
        raise ConfigError(f"storage_path {directory} has only {free_gb:.2f} GB free; at least {min_free_gb} GB "
                          f"is needed for checkpoints (set LEUKOTUNE_MIN_FREE_GB to change the threshold)")


def _free_gb(directory: Path) -> float:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize / 1e9


def check_weights(study: StudyConfig, space: dict[str, Any]) -> None:
    """Pretrained weights cannot be downloaded mid-study: find them now for every model the study can pick."""
    from models import get_model_spec, resolve_weights_path

    if not study.train.weights:
        return
    names = set(space.get("model", {}).get("choice", [])) | {study.train.model}
    for name in sorted(names):
        if "weights" in get_model_spec(name).takes:
            try:
                resolve_weights_path(name, study.train.weights)
            except Exception as exc:  # noqa: BLE001 - re-raised with the study key named
                raise ConfigError(f"train.weights={study.train.weights!r} for {name}: {exc}") from exc


def summarise_data(study: StudyConfig) -> dict[str, Any]:
    """Decode and split the data once on the driver, before Ray starts.

    Unreadable files are found here (and listed in the parent run), not one trial at a time; a folder with nothing
    usable, or a split that leaves a class out, stops the command. The decoded cache it builds is the one the
    trials on this node then read.
    """
    from data import DatasetError, prepare_data
    from tuner.datasets import resolve_data_root

    root = resolve_data_root(study.data)
    try:
        data = prepare_data(root, size=study.train.image_size, color=study.train.color, split=study.data.split,
                            val_fraction=study.data.val_fraction, seed=study.data.seed,
                            val_fold=study.data.val_fold, cache_dir=study.data.cache_dir)
    except DatasetError as exc:
        raise ConfigError(f"data: {exc}") from exc
    labels = data.labels.tolist()
    return {"root": str(root), "cells": len(labels), "all": labels.count(1), "hem": labels.count(0),
            "subjects": len(set(data.subjects.tolist())), "split": data.counts,
            "skipped": [{"path": s.path, "reason": s.reason} for s in data.skipped],
            "synthetic": not study.data.path, "fingerprint": data.fingerprint}


def plan_study(study: StudyConfig, resume: bool, log: Callable[[str], None] = print) -> StudyPlan:
    storage = Path(study.storage_path).expanduser().resolve()
    check_storage(storage, float(os.environ.get("LEUKOTUNE_MIN_FREE_GB", "1.0")))
    if resume:
        directory = latest_study_dir(storage, study.name)
        saved = json.loads((directory / STUDY_FILE).read_text())
        study = from_dict(StudyConfig, saved["config"])
        log(f"resuming study {directory.name} (its saved configuration is used)")
    else:
        directory = storage / f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    space = check_search_space(study)
    check_weights(study, space)
    plan = StudyPlan(study=study, study_id=directory.name, directory=directory, space=space, resume=resume)
    plan.data_summary = summarise_data(study)
    return plan


def latest_study_dir(storage: Path, name: str) -> Path:
    candidates = sorted((p for p in storage.glob(f"{name}-*") if (p / STUDY_FILE).is_file()),
                        key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ConfigError(f"--resume: no study named '{name}' under {storage}; start it without --resume first")
    return candidates[-1]


def save_plan(plan: StudyPlan, parent_run_id: str) -> None:
    plan.directory.mkdir(parents=True, exist_ok=True)
    payload = {"study_id": plan.study_id, "config": plan.study.to_dict(), "parent_run_id": parent_run_id}
    (plan.directory / STUDY_FILE).write_text(json.dumps(payload, indent=2, default=str))


# ---------------------------------------------------------------- Ray

def init_ray(address: str | None, env: dict[str, str], log: Callable[[str], None] = print):
    """Join a cluster (address or RAY_ADDRESS), else start a local one with its dashboard."""
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    # Tune warns on every fast checkpoint cadence; a few-second epoch is normal here, not a bottleneck.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    runtime_env = {"env_vars": env}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        context = ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        # The dashboard is not optional: Train V2 needs it to release finished runs' placement groups.
        context = ray.init(include_dashboard=True, dashboard_host="127.0.0.1", runtime_env=runtime_env,
                           log_to_driver=True, configure_logging=True, logging_level="WARNING")
    log(f"Ray: {int(ray.cluster_resources().get('CPU', 0))} CPUs, {int(ray.cluster_resources().get('GPU', 0))} GPUs"
        + (f", dashboard {context.dashboard_url}" if context.dashboard_url else ""))
    return context


# ray_train trials: the Tune trial actor only waits on its TorchTrainer (whose controller takes 0 CPUs); Tune
# refuses a zero request, so it holds this sliver, and concurrency counts it so workers always find their CPUs.
TRIAL_DRIVER_CPU = 0.01


def trial_resources(study: StudyConfig, gpu: bool) -> dict[str, float]:
    """What one trial's own actor holds. Inline: the loop runs there. ray_train: the workers hold the rest."""
    if runtime_of(study) == "ray_train":
        return {"CPU": TRIAL_DRIVER_CPU}
    return {"CPU": study.resources.cpus_per_worker, **({"GPU": 1} if gpu else {})}


def concurrency_for(study: StudyConfig, cluster: dict[str, float], gpu: bool) -> int:
    """Concurrent trials the cluster can really hold; refuse a trial that can never be placed."""
    resources = study.resources
    cpus_per_trial = resources.workers * resources.cpus_per_worker
    if runtime_of(study) == "ray_train":
        cpus_per_trial += TRIAL_DRIVER_CPU
    fits = int(cluster.get("CPU", 0) // cpus_per_trial)
    if gpu:
        fits = min(fits, int(cluster.get("GPU", 0) // resources.workers))
    if fits < 1:
        raise ConfigError(
            f"resources: one trial needs {cpus_per_trial:g} CPUs{' and ' + str(resources.workers) + ' GPUs' if gpu else ''}"
            f" but the cluster has {cluster.get('CPU', 0):g} CPUs and {cluster.get('GPU', 0):g} GPUs")
    wanted = study.tune.max_concurrent or fits
    return max(1, min(wanted, fits, study.tune.num_samples))


def check_runtime(study: StudyConfig, dashboard_url: str | None) -> None:
    # Seen with Ray 2.60: without the dashboard, finished Train runs inside Tune trials never release their
    # placement groups and the study deadlocks. Refuse that combination instead of hanging.
    if runtime_of(study) == "ray_train" and not dashboard_url:
        raise ConfigError("resources.trial_runtime=ray_train needs Ray's dashboard (install ray[default] and start "
                          "the cluster with it), or use resources.workers=1 with trial_runtime=inline")


# ---------------------------------------------------------------- the study

def make_searcher(plan: StudyPlan):
    """Seeded TPE (or random, for baselines) over the define-by-run space.

    The Optuna study lives in the searcher, which Tune checkpoints with the experiment state: one source of truth
    that a resumed study restores together with its trials (a separate Optuna database would run ahead of it).
    """
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    tune_cfg = plan.study.tune
    sampler = (optuna.samplers.TPESampler(seed=tune_cfg.seed) if tune_cfg.search == "optuna"
               else optuna.samplers.RandomSampler(seed=tune_cfg.seed))
    return OptunaSearch(space=DefineByRun(plan.space, dict(plan.study.train.__dict__)), metric=tune_cfg.metric,
                        mode=tune_cfg.mode, sampler=sampler,
                        points_to_evaluate=list(tune_cfg.points_to_evaluate) or None)


def make_scheduler(study: StudyConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    tune_cfg = study.tune
    if tune_cfg.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", metric=tune_cfg.metric, mode=tune_cfg.mode,
                         max_t=study.train.epochs, grace_period=min(tune_cfg.grace_period, study.train.epochs),
                         reduction_factor=tune_cfg.reduction_factor)


def build_tuner(plan: StudyPlan, callback, concurrency: int, gpu: bool):
    """A new Tuner, or on resume the saved one (which brings back its searcher state and our callback)."""
    from ray import tune

    study = plan.study
    trainable = tune.with_resources(
        tune.with_parameters(tune_trial, study_dict={**study.to_dict(), "storage_path": str(plan.directory)}),
        trial_resources(study, gpu))
    run_config = tune.RunConfig(
        name=plan.study_id, storage_path=str(plan.directory.parent), callbacks=[callback], verbose=0,
        failure_config=tune.FailureConfig(max_failures=study.resources.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2))
    if plan.resume:
        return tune.Tuner.restore(str(plan.directory), trainable, resume_unfinished=True, resume_errored=True)
    tune_config = tune.TuneConfig(search_alg=make_searcher(plan), scheduler=make_scheduler(study),
                                  num_samples=study.tune.num_samples, max_concurrent_trials=concurrency,
                                  reuse_actors=reuse_actors(study))
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


@dataclass
class StudyOutcome:
    study_id: str
    parent_run_id: str
    complete: bool
    leaderboard: list[dict[str, Any]]
    tracking_uri: str
    experiment_id: str


def forward_sigterm_to_tune() -> None:
    # `ray job stop` and schedulers send SIGTERM; Tune stops gracefully (state saved) on SIGUSR1/SIGINT only.
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGUSR1))


def run_study(plan: StudyPlan, address: str | None = None, log: Callable[[str], None] = print) -> StudyOutcome:
    """Run (or resume) the study end to end; every MLflow run is closed whatever happens."""
    import ray

    from tuner.parent_run import close_parent, log_study_end, open_parent
    from tuner.tracking import Tracker, check_reachable, resolve_tracking_uri
    from tuner.trial_runs import TrialRecorder, TrialRunsCallback, trial_summary

    study = plan.study
    uri = resolve_tracking_uri(study.tracking.tracking_uri)
    check_reachable(uri)
    tracker = Tracker(uri, study.tracking.experiment, log=log)
    parent_run_id = open_parent(tracker, plan)
    save_plan(plan, parent_run_id)
    # Workers inherit the tracking URI; inside a Ray Job it already arrives through the job's runtime_env, and Ray
    # refuses the same variable set twice.
    worker_env = {} if os.environ.get("MLFLOW_TRACKING_URI") == uri else {"MLFLOW_TRACKING_URI": uri}
    context = init_ray(address, worker_env, log=log)
    check_runtime(study, context.dashboard_url)
    from tuner.raytrain import use_gpu

    gpu = use_gpu(study)
    concurrency = concurrency_for(study, ray.cluster_resources(), gpu)
    log(f"study {plan.study_id}: {study.tune.num_samples} trials, {concurrency} at a time, "
        f"runtime {runtime_of(study)}, metric {study.tune.metric} ({study.tune.mode})")
    recorder = TrialRecorder(tracker, parent_run_id, plan.study_id, study.tune.metric, study.train.epochs,
                             log_models=study.tracking.log_models, log=log)
    forward_sigterm_to_tune()
    complete = False
    try:
        build_tuner(plan, TrialRunsCallback(recorder), concurrency, gpu).fit()
        complete = sum(t.status in ("TERMINATED", "ERROR") for t in recorder.trials) >= study.tune.num_samples
    finally:
        closed = recorder.close()
        leaderboard = [trial_summary(t, study.tune.metric) for t in recorder.trials]
        log_study_end(tracker, parent_run_id, plan, leaderboard, complete)
        close_parent(tracker, parent_run_id, complete)
        if closed["killed"]:
            log(f"{closed['killed']} unfinished trial run(s) marked KILLED in MLflow")
    return StudyOutcome(plan.study_id, parent_run_id, complete, sort_leaderboard(leaderboard, study.tune.mode), uri,
                        tracker.experiment_id)


def sort_leaderboard(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    def key(row):
        value = row.get("best")
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        return (missing, -(value or 0) if mode == "max" else (value or 0), row["trial_id"])

    return sorted(rows, key=key)
