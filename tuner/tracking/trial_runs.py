"""One MLflow child run per trial under the study's parent run, written from Tune's trial events in the driver
(`tuner/tune/events.py` delivers them).

All MLflow writes happen here, in the driver: workers only train. A resumed study finds each trial's run again
by its trial id, and epochs already logged are not logged twice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from leukotune.tuner.metrics import ranking_key
from leukotune.tuner.tracking.artifacts import load_best, log_pytorch_model, log_trial_artifacts
from leukotune.tuner.tracking.client import (
    PARENT_TAG,
    TAG_EARLY_STOP,
    TAG_KIND,
    TAG_MODEL_URI,
    TAG_NODE,
    TAG_DEVICE,
    TAG_ORPHANED,
    TAG_PIPELINE,
    TAG_STUDY,
    TAG_TRIAL,
    BackgroundLogger,
    Tracker,
    numeric_metrics,
)
from leukotune.tuner.tracking.datasets import log_dataset_inputs, run_dataset_inputs

OPEN_STATES = ("RUNNING", "SCHEDULED")


class TrialRecorder:
    """One MLflow child run per trial, written from the driver."""

    def __init__(self, tracker: Tracker, parent_run_id: str, study_id: str, metric: str, epochs: int,
                 log_models: int | str = 3, log: Callable[[str], None] = print, mode: str = "max",
                 after_finish: Callable[[Any], None] | None = None):
        """`after_finish(trial)`: called on the background thread once a finished trial's run is complete in MLflow
        (the study frees its checkpoints there when they can no longer be used)."""
        self.after_finish = after_finish
        self.tracker, self.parent_run_id, self.study_id = tracker, parent_run_id, study_id
        self.metric, self.epochs, self.log_models, self.log, self.mode = metric, epochs, log_models, log, mode
        self.run_ids: dict[str, str] = {}
        self.logged_step: dict[str, int] = {}
        self.last_epoch: dict[str, int] = {}
        self.closed: set[str] = set()
        self.placed: set[str] = set()  # runs already tagged with their device and input pipeline
        self.trials: list = []
        self.background = BackgroundLogger(log)
        self._datasets: list | None = None  # the study run's dataset inputs, read once
        self._earlier: dict[str, Any] | None = None  # trial id -> run from before a resume, read once

    # ------------------------------------------------------------ runs
    # Run creation and each epoch's metrics are written on Tune's event loop, before Tune saves its own state: a
    # driver killed after that save would otherwise lose epochs that Tune never replays. The slow work of a trial's
    # end (plots, artifacts, closing the run) goes to the background thread, which `close` finishes on resume.
    def run_for(self, trial) -> str:
        """The trial's child run: found by trial id when it exists (resume), created otherwise."""
        trial_id = trial.trial_id
        if trial_id in self.run_ids:
            return self.run_ids[trial_id]
        found = self._earlier_runs().get(trial_id)
        if found is not None:
            run_id = found.info.run_id
            self.tracker.client.update_run(run_id, "RUNNING")
            self.logged_step[run_id] = self.tracker.last_step(run_id, "val_loss")
        else:
            tags = {PARENT_TAG: self.parent_run_id, TAG_STUDY: self.study_id, TAG_TRIAL: trial_id, TAG_KIND: "trial"}
            run_id = self.tracker.create_run(f"trial-{trial_id}", tags)
            self.logged_step[run_id] = 0
            log_dataset_inputs(self.tracker, run_id, self.study_datasets())
        self.tracker.log_params(run_id, dict(trial.config), new_run=found is None)
        self.run_ids[trial_id] = run_id
        return run_id

    def _earlier_runs(self) -> dict[str, Any]:
        """The study's trial runs from before this driver (a resumed study), by trial id, read once: a search on
        every trial start grew with the number of runs."""
        if self._earlier is None:
            runs = self.tracker.find_runs(f"tags.`{TAG_STUDY}` = '{self.study_id}' and tags.`{TAG_KIND}` = 'trial'")
            self._earlier = {}
            for run in runs:
                self._earlier.setdefault(run.data.tags.get(TAG_TRIAL), run)
        return self._earlier

    def _runs_of_trial(self, trial_id: str) -> list:
        return self.tracker.find_runs(f"tags.`{TAG_STUDY}` = '{self.study_id}' and tags.`{TAG_TRIAL}` = '{trial_id}'")

    def study_datasets(self) -> list:
        """Every trial trains on its study's data: the parent run's dataset inputs are copied to each trial run."""
        if self._datasets is None:
            self._datasets = run_dataset_inputs(self.tracker, self.parent_run_id)
        return self._datasets

    def record_result(self, trial, result: dict) -> bool:
        """Log one epoch's metrics; False when MLflow already has that epoch (a result Tune replays after a
        restart), which is then not logged again."""
        run_id = self.run_for(trial)
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        self.last_epoch[trial.trial_id] = epoch
        if run_id not in self.placed and result.get("device"):
            # Where the trial trained, as the trial itself saw it: a GPU slot that ended up on the CPU shows here.
            self.tracker.set_tags(run_id, {TAG_DEVICE: str(result["device"]),
                                           TAG_PIPELINE: str(result.get("pipeline", "")),
                                           TAG_NODE: str(result.get("node_id", ""))})
            self.placed.add(run_id)
        if epoch <= self.logged_step.get(run_id, 0):
            return False  # already in MLflow from before a restart: one value per epoch, no duplicates
        self.tracker.log_metrics(run_id, numeric_metrics(result), step=epoch)
        self.logged_step[run_id] = epoch
        return True

    def record_complete(self, trial) -> None:
        run_id = self.run_for(trial)
        early = self.last_epoch.get(trial.trial_id, self.epochs) < self.epochs
        self.tracker.set_tags(run_id, {TAG_EARLY_STOP: str(early).lower()})
        self.closed.add(run_id)
        self.background.submit(self._finish, run_id, checkpoint_dir_of(trial), trial)

    def record_error(self, trial) -> None:
        run_id = self.run_for(trial)
        self.closed.add(run_id)
        error = str(getattr(trial, "error_file", "") or "")
        self.background.submit(self._fail, run_id, error)

    # ------------------------------------------------------------ endings
    def _finish(self, run_id: str, checkpoint_dir: Path | None, trial=None) -> None:
        try:
            if checkpoint_dir is not None:
                log_trial_artifacts(self.tracker, run_id, checkpoint_dir, self.metric)
        finally:
            # The trial did finish: a failed upload is reported, but must not leave the run RUNNING.
            self.tracker.end_run(run_id, "FINISHED")
        if trial is not None and self.after_finish is not None:
            self.after_finish(trial)

    def _fail(self, run_id: str, error_file: str) -> None:
        if error_file and Path(error_file).is_file():
            self.tracker.log_text(run_id, Path(error_file).read_text()[-20000:], "error.txt")
        self.tracker.end_run(run_id, "FAILED")

    # ------------------------------------------------------------ models
    def log_top_models(self) -> list[str]:
        """Queue the models of the study's top `log_models` trials (by the study metric) for the background thread;
        returns their trial ids.

        Only these are exported, once the study is done: an export per trial end took CPU from running trials.
        """
        chosen = top_trials(self.trials, self.metric, self.mode, self.log_models)
        for trial in chosen:
            self.background.submit(self._log_model, trial.trial_id, checkpoint_dir_of(trial))
        return [trial.trial_id for trial in chosen]

    def _log_model(self, trial_id: str, checkpoint_dir: Path | None) -> None:
        found = self._runs_of_trial(trial_id)
        if not found or checkpoint_dir is None:
            self.log(f"WARNING: no model logged for trial {trial_id}: its {'checkpoint' if found else 'run'} is gone")
            return
        run = found[0]
        if run.data.tags.get(TAG_MODEL_URI, "").startswith("models:/"):
            return  # logged before the study was resumed
        tags = {TAG_STUDY: self.study_id, TAG_TRIAL: trial_id}
        uri = log_pytorch_model(self.tracker, run.info.run_id, load_best(checkpoint_dir), f"trial-{trial_id}", tags)
        self.tracker.set_tags(run.info.run_id, {TAG_MODEL_URI: uri})

    def _retire_orphan(self, run_id: str) -> None:
        """A run whose trial Tune never recorded: it started after the last state snapshot before the driver died,
        and the resumed study ran its slot as a new trial. Closed as KILLED, tagged, and soft-deleted (restorable
        with `mlflow runs restore`) so the study shows exactly one run per trial."""
        self.tracker.end_run(run_id, "KILLED")
        self.tracker.set_tags(run_id, {TAG_ORPHANED: "true"})
        self.tracker.client.delete_run(run_id)

    def close(self) -> dict[str, int]:
        """Wait for uploads (model exports queued by `log_top_models` included), then settle every run of this
        study still open, by what Tune says of its trial.

        A trial that finished just before the driver died is TERMINATED in Tune's state but its run may still be
        RUNNING: it is finished properly now (plots from its checkpoint). Trials cut short are KILLED.
        Runs of trials Tune never recorded are retired (see `_retire_orphan`).
        """
        self.background.drain()
        trials = {trial.trial_id: trial for trial in self.trials}
        found = self.tracker.find_runs(f"tags.`{TAG_STUDY}` = '{self.study_id}' and tags.`{TAG_KIND}` = 'trial'")
        killed = 0
        for run in found:
            run_id = run.info.run_id
            if run.info.status not in OPEN_STATES or run_id in self.closed:
                continue
            trial = trials.get(run.data.tags.get(TAG_TRIAL))
            status = getattr(trial, "status", None)
            if trial is None and trials:
                self._retire_orphan(run_id)
            elif status == "TERMINATED":
                self._finish(run_id, checkpoint_dir_of(trial))
            elif status == "ERROR":
                self._fail(run_id, str(getattr(trial, "error_file", "") or ""))
            else:
                self.tracker.end_run(run_id, "KILLED")
                killed += 1
        self.background.close()
        return {"killed": killed}


def checkpoint_dir_of(trial) -> Path | None:
    """Local folder of a trial's newest checkpoint (nested Train runs report theirs as `checkpoint_path`)."""
    checkpoint = getattr(trial, "checkpoint", None)
    if checkpoint is not None and Path(checkpoint.path).is_dir():
        return Path(checkpoint.path)
    path = (getattr(trial, "last_result", None) or {}).get("checkpoint_path")
    return Path(path) if path and Path(path).is_dir() else None


def top_trials(trials: list, metric: str, mode: str, keep: int | str) -> list:
    """The finished trials whose models are kept: the best `keep` (an int, or "all") by `best_<metric>`, ties to
    the smaller trial id as on the leaderboard; trials without a finite value have no best model to keep."""
    def value(trial) -> Any:
        return (getattr(trial, "last_result", None) or {}).get(f"best_{metric}")

    finished = [t for t in trials if t.status == "TERMINATED" and not ranking_key(value(t), mode)[0]]
    ranked = sorted(finished, key=lambda t: (*ranking_key(value(t), mode), t.trial_id))
    return ranked if keep == "all" else ranked[:int(keep)]


def trial_summary(trial, metric: str) -> dict[str, Any]:
    result = getattr(trial, "last_result", None) or {}
    return {"trial_id": trial.trial_id, "status": trial.status, "config": dict(trial.config),
            "epochs": result.get("epoch", 0), "best": result.get(f"best_{metric}"),
            "best_std": result.get(f"best_{metric}_std"), "device": result.get("device"),
            "val_accuracy": result.get("val_accuracy"), "val_balanced_accuracy": result.get("val_balanced_accuracy")}
