"""`leukotune tune`: Ray Tune + Optuna (TPE) + ASHA over the study's space, every trial recorded in MLflow."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

from ray import tune
from ray.tune.logger import JsonLoggerCallback

from leukotune.tuner.cluster.capacity import ClusterShape, read_cluster_shape
from leukotune.tuner.cluster.job_driver import scratch_warning
from leukotune.tuner.cluster.ray_cluster import ClusterError, init_ray
from leukotune.tuner.cluster.scaling import release_request, wait_for_slots
from leukotune.tuner.cluster.storage import check_shared_storage
from leukotune.tuner.cluster.trial_resources import (
    TrialResources,
    concurrency_for,
    decide_trial_resources,
    runtime_of,
)
from leukotune.tuner.compat import saved_search_budget, write_search_budget
from leukotune.tuner.config import StudyConfig
from leukotune.tuner.tracking import (
    Tracker,
    TrialRecorder,
    check_reachable,
    close_parent,
    log_study_end,
    open_parent,
    record_extension,
    resolve_tracking_uri,
    trial_summary,
)
from leukotune.tuner.tracking.parent_run import rank_rows
from leukotune.tuner.tune.checkpoint_view import ForgetMissingCheckpoints
from leukotune.tuner.tune.console import StudyConsole, changing_line
from leukotune.tuner.tune.events import StopWhenNodeUnfit, StudyEvents, attach, detach
from leukotune.tuner.tune.holdout import add_test_scores, score_top_trials
from leukotune.tuner.tune.packing import check_packing, probe_gpu_memory
from leukotune.tuner.tune.plan import RESULT_FILE, StudyPlan, save_plan, save_result
from leukotune.tuner.tune.retention import prune_checkpoints, prune_finished_trial, trials_to_keep
from leukotune.tuner.tune.search import make_scheduler, make_searcher
from leukotune.tuner.tune.trainable import reuse_actors, tune_trial


@dataclass(frozen=True)
class Placement:
    """Where the study's trials go, decided after joining the cluster and before the first trial."""

    shape: ClusterShape
    resources: TrialResources
    concurrency: int
    shared_marker: Path


def place_study(plan: StudyPlan, log: Callable[[str], None]) -> Placement:
    """Read what the cluster can start, decide each trial's resources and how many run together, refuse what no
    node could hold or a study folder some node would not see, and wait for the first worker to be up."""
    study = plan.study
    shape = read_cluster_shape(log)
    resources = decide_trial_resources(study, shape)
    marker = check_shared_storage(plan.directory, shape, log)
    concurrency = concurrency_for(study, resources, shape)
    log(f"cluster: {shape.describe()}, from {shape.source}; each trial {resources.describe()}")
    wait_for_slots(resources, shape, concurrency, study.resources.wait_for_nodes_s, changing_line())
    if resources.uses_gpu:
        memory = probe_gpu_memory(log)
        if memory is not None:
            split_images = plan.data_summary.cells_on("train", "val")  # what a trial may hold on its GPU
            log(check_packing(study, plan.space, resources, memory, split_images))
    return Placement(shape, resources, concurrency, marker)


def check_runtime(study: StudyConfig, dashboard_url: str | None) -> None:
    # Seen with Ray 2.60: without the dashboard, finished Train runs inside Tune trials never release their
    # placement groups and the study deadlocks. Refuse that combination instead of hanging.
    if runtime_of(study) == "ray_train" and not dashboard_url:
        raise ClusterError("resources.trial_runtime=ray_train needs Ray's dashboard (install ray[default] and start "
                           "the cluster with it), or use resources.workers=1 with trial_runtime=inline")


def build_tuner(plan: StudyPlan, callbacks: list, placement: Placement):
    """A new Tuner, or on resume the saved one (which brings back its searcher state and our callbacks)."""

    study = plan.study
    # Tune's own result logs: JSON only (its CSV and TensorBoard copies are off, see tuner/process.py).
    callbacks = [*callbacks, JsonLoggerCallback()]
    trainable = tune.with_resources(
        tune.with_parameters(tune_trial, study_dict={**study.to_dict(), "storage_path": str(plan.directory)},
                             resources=placement.resources.to_dict(), shared_marker=str(placement.shared_marker)),
        placement.resources.tune_request())
    run_config = tune.RunConfig(
        name=plan.study_id, storage_path=str(plan.directory.parent), callbacks=callbacks, verbose=0,
        stop=StopWhenNodeUnfit(plan.study_id),
        failure_config=tune.FailureConfig(max_failures=study.resources.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2))
    if plan.resume:
        keep_search_budget(plan, placement.concurrency)
        # An extension leaves the earlier trials as they ended: one that failed stays failed (a killed extension's
        # own resume retries its failed trials like any resume).
        return tune.Tuner.restore(str(plan.directory), trainable, resume_unfinished=True,
                                  resume_errored=plan.extends_from is None)
    concurrency = placement.concurrency
    tune_config = tune.TuneConfig(search_alg=make_searcher(plan, concurrency), scheduler=make_scheduler(study),
                                  num_samples=study.tune.num_samples, max_concurrent_trials=concurrency,
                                  reuse_actors=reuse_actors(placement.resources))
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def keep_search_budget(plan: StudyPlan, concurrency: int) -> None:
    """Tune restores the budget it started with (trials in all, trials at once) and ignores a new one: write the
    study's into Tune's saved search state before the restore, so an extension creates its new trials and a
    resumed study runs as many at once as this cluster takes. Unchanged, the state is left as it is."""
    saved = saved_search_budget(plan.directory)
    wanted_concurrency = concurrency if saved["max_concurrent"] is not None else None
    if (saved["num_samples"], saved["max_concurrent"]) != (plan.study.tune.num_samples, wanted_concurrency):
        write_search_budget(plan.directory, plan.study.tune.num_samples, concurrency)


@dataclass
class StudyOutcome:
    study_id: str
    parent_run_id: str
    complete: bool
    leaderboard: list[dict[str, Any]]
    tracking_uri: str
    experiment_id: str
    # Why the study was stopped before its end by a node unfit for its trials (None: it was not).
    stopped: str | None = None

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> StudyOutcome:
        """The outcome a finished study saved, field by field: one saved by an older leukotune may lack a field
        added since, or hold one removed."""
        return cls(**{field.name: saved.get(field.name) for field in fields(cls)})


def run_study(plan: StudyPlan, address: str | None = None, log: Callable[[str], None] = print) -> StudyOutcome:
    """Run (or resume) the study end to end; every MLflow run is closed whatever happens."""

    study = plan.study
    uri = resolve_tracking_uri(study.tracking.tracking_uri)
    check_reachable(uri)
    warning = scratch_warning(uri, plan.directory.parent)
    if warning:
        log(warning)
    # Workers inherit the tracking URI; inside a Ray Job it already arrives through the job's runtime_env, and Ray
    # refuses the same variable set twice.
    worker_env = {} if os.environ.get("MLFLOW_TRACKING_URI") == uri else {"MLFLOW_TRACKING_URI": uri}
    # Ray first: a cluster that does not answer, or cannot hold a trial, stops the study before its parent run
    # exists (no half-written run).
    context = init_ray(address, worker_env, log=log)
    check_runtime(study, context.dashboard_url)
    try:
        placement = place_study(plan, log)
    except BaseException:
        release_request()
        raise
    tracker = Tracker(uri, study.tracking.experiment, log=log)
    parent_run_id = open_parent(tracker, plan)
    save_plan(plan, parent_run_id)
    if plan.extends_from is not None:
        record_extension(tracker, parent_run_id, plan)
        # From here the study is unfinished: a kill during the extension is resumed like any study.
        (plan.directory / RESULT_FILE).unlink(missing_ok=True)
    resources = placement.resources
    folds = study.data.cv_folds
    cost = (f"; each trial trains {folds} fold models side by side ({folds}x the compute of one split), scored by "
            f"their mean" if folds else "")
    log(f"study {plan.study_id}: {study.tune.num_samples} trials, {placement.concurrency} at a time, "
        f"runtime {resources.runtime}, metric {study.tune.metric} ({study.tune.mode}){cost}")
    # The default `print` gets the console's own output (a live line on a terminal); any other `log` gets the lines.
    console = StudyConsole(study.tune.num_samples, study.tune.metric, study.tune.mode, study.train.epochs,
                           study.tune.scheduler, log=None if log is print else log)
    keep = trials_to_keep(study)
    recorder = TrialRecorder(tracker, parent_run_id, plan.study_id, study.tune.metric, study.train.epochs,
                             log_models=study.tracking.log_models, log=console.log, mode=study.tune.mode,
                             after_finish=lambda trial: prune_finished_trial(trial, recorder.trials, study.tune.metric,
                                                                             study.tune.mode, keep))
    complete, stopped = False, None
    test_scores: dict[str, dict[str, float]] = {}
    live = attach(plan.study_id, recorder, console)
    try:
        build_tuner(plan, [StudyEvents(plan.study_id), ForgetMissingCheckpoints()], placement).fit()
        stopped = live.stopped
        complete = (stopped is None
                    and sum(t.status in ("TERMINATED", "ERROR") for t in recorder.trials) >= study.tune.num_samples)
        if complete:
            # Models of the top trials only once the study is complete (on an interrupted one the top is not known
            # yet). They export on the driver's background thread while the test side is scored on the cluster.
            console.models_logged(recorder.log_top_models())
            # The test side is read once, by the top trials of a finished search only.
            test_scores = score_top_trials(plan, recorder.trials, recorder.run_ids, tracker, parent_run_id,
                                           resources, log)
    finally:
        release_request()
        detach(plan.study_id)
        console.close()  # the live line goes before the closing lines
        closed = recorder.close()
        # After close(): the runs' learning curves are read from the trials' state.pt.
        prune_checkpoints(recorder.trials, study.tune.metric, study.tune.mode, keep, study_complete=complete, log=log)
        leaderboard = [trial_summary(t, study.tune.metric) for t in recorder.trials]
        add_test_scores(leaderboard, test_scores, study.tune.metric)
        log_study_end(tracker, parent_run_id, plan, leaderboard, complete)
        close_parent(tracker, parent_run_id, complete)
        if closed["killed"]:
            log(f"{closed['killed']} unfinished trial run(s) marked KILLED in MLflow")
    outcome = StudyOutcome(plan.study_id, parent_run_id, complete, rank_rows(leaderboard, study.tune.mode),
                           uri, tracker.experiment_id, stopped)
    if complete:
        save_result(plan.directory, asdict(outcome))  # `--resume` of a finished study answers from this
    return outcome
