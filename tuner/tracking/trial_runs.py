"""A Tune callback that keeps one MLflow child run per trial under the study's parent run.

All MLflow writes happen here, in the driver: workers only train. A resumed study finds each trial's run again
by its trial id, and epochs already logged are not logged twice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ray import tune

from leukotune.tuner.tracking.artifacts import log_trial_artifacts
from leukotune.tuner.tracking.client import (
    PARENT_TAG,
    TAG_EARLY_STOP,
    TAG_KIND,
    TAG_MODEL_URI,
    TAG_ORPHANED,
    TAG_STUDY,
    TAG_TRIAL,
    BackgroundLogger,
    Tracker,
    numeric_metrics,
)

OPEN_STATES = ("RUNNING", "SCHEDULED")


# Live recorders by study id. Tune pickles its callbacks into the experiment state (and restores them from
# there on --resume); a recorder holds an MLflow client and a thread pool, which must not be pickled.
_RECORDERS: dict[str, "TrialRecorder"] = {}


class TrialRunsCallback(tune.Callback):
    """The picklable face of a TrialRecorder: forwards Tune's hooks to the live recorder of its study."""

    def __init__(self, recorder: "TrialRecorder"):
        self.study_id = recorder.study_id
        _RECORDERS[self.study_id] = recorder

    def __getstate__(self) -> dict[str, str]:
        return {"study_id": self.study_id}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.study_id = state["study_id"]

    @property
    def recorder(self) -> "TrialRecorder":
        return _RECORDERS[self.study_id]

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        self.recorder.trials = trials

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.recorder.run_for(trial)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        self.recorder.record_result(trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.recorder.record_complete(trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.recorder.record_error(trial)


class TrialRecorder:
    """One MLflow child run per trial, written from the driver."""

    def __init__(self, tracker: Tracker, parent_run_id: str, study_id: str, metric: str, epochs: int,
                 log_models: bool = True, log: Callable[[str], None] = print):
        self.tracker, self.parent_run_id, self.study_id = tracker, parent_run_id, study_id
        self.metric, self.epochs, self.log_models, self.log = metric, epochs, log_models, log
        self.run_ids: dict[str, str] = {}
        self.logged_step: dict[str, int] = {}
        self.last_epoch: dict[str, int] = {}
        self.closed: set[str] = set()
        self.trials: list = []
        self.background = BackgroundLogger(log)

    # ------------------------------------------------------------ runs
    def run_for(self, trial) -> str:
        """The trial's child run: found by trial id when it exists (resume), created otherwise."""
        trial_id = trial.trial_id
        if trial_id in self.run_ids:
            return self.run_ids[trial_id]
        found = self.tracker.find_runs(f"tags.`{TAG_STUDY}` = '{self.study_id}' and tags.`{TAG_TRIAL}` = '{trial_id}'")
        if found:
            run_id = found[0].info.run_id
            self.tracker.client.update_run(run_id, "RUNNING")
            self.logged_step[run_id] = self.tracker.last_step(run_id, "val_loss")
        else:
            tags = {PARENT_TAG: self.parent_run_id, TAG_STUDY: self.study_id, TAG_TRIAL: trial_id, TAG_KIND: "trial"}
            run_id = self.tracker.create_run(f"trial-{trial_id}", tags)
            self.logged_step[run_id] = 0
        self.tracker.log_params(run_id, dict(trial.config))
        self.run_ids[trial_id] = run_id
        return run_id

    def record_result(self, trial, result: dict) -> None:
        run_id = self.run_for(trial)
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        self.last_epoch[trial.trial_id] = epoch
        if epoch <= self.logged_step.get(run_id, 0):
            return  # already in MLflow from before a restart: one value per epoch, no duplicates
        self.tracker.log_metrics(run_id, numeric_metrics(result), step=epoch)
        self.logged_step[run_id] = epoch
        self.log(f"trial {trial.trial_id} epoch {epoch}/{self.epochs}  {self.metric} "
                 f"{result.get(self.metric, float('nan')):.4f}  val_acc {result.get('val_accuracy', float('nan')):.4f}")

    def record_complete(self, trial) -> None:
        run_id = self.run_for(trial)
        early = self.last_epoch.get(trial.trial_id, self.epochs) < self.epochs
        self.tracker.set_tags(run_id, {TAG_EARLY_STOP: str(early).lower()})
        self.closed.add(run_id)
        self.background.submit(self._finish, run_id, checkpoint_dir_of(trial))

    def record_error(self, trial) -> None:
        run_id = self.run_for(trial)
        self.closed.add(run_id)
        error = str(getattr(trial, "error_file", "") or "")
        self.background.submit(self._fail, run_id, error)

    # ------------------------------------------------------------ endings
    def _finish(self, run_id: str, checkpoint_dir: Path | None) -> None:
        try:
            if checkpoint_dir is not None:
                uri = log_trial_artifacts(self.tracker, run_id, checkpoint_dir, self.metric, self.log_models)
                if uri:
                    self.tracker.set_tags(run_id, {TAG_MODEL_URI: uri})
        finally:
            # The trial did finish: a failed upload is reported, but must not leave the run RUNNING.
            self.tracker.end_run(run_id, "FINISHED")

    def _fail(self, run_id: str, error_file: str) -> None:
        if error_file and Path(error_file).is_file():
            self.tracker.log_text(run_id, Path(error_file).read_text()[-20000:], "error.txt")
        self.tracker.end_run(run_id, "FAILED")

    def _retire_orphan(self, run_id: str) -> None:
        """A run whose trial Tune never recorded: it started after the last state snapshot before the driver died,
        and the resumed study ran its slot as a new trial. Closed as KILLED, tagged, and soft-deleted (restorable
        with `mlflow runs restore`) so the study shows exactly one run per trial."""
        self.tracker.end_run(run_id, "KILLED")
        self.tracker.set_tags(run_id, {TAG_ORPHANED: "true"})
        self.tracker.client.delete_run(run_id)

    def close(self) -> dict[str, int]:
        """Wait for uploads, then settle every run of this study still open, by what Tune says of its trial.

        A trial that finished just before the driver died is TERMINATED in Tune's state but its run may still be
        RUNNING: it is finished properly now (model and plots from its checkpoint). Trials cut short are KILLED.
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
        _RECORDERS.pop(self.study_id, None)
        return {"killed": killed}


def checkpoint_dir_of(trial) -> Path | None:
    """Local folder of a trial's newest checkpoint (nested Train runs report theirs as `checkpoint_path`)."""
    checkpoint = getattr(trial, "checkpoint", None)
    if checkpoint is not None and Path(checkpoint.path).is_dir():
        return Path(checkpoint.path)
    path = (getattr(trial, "last_result", None) or {}).get("checkpoint_path")
    return Path(path) if path and Path(path).is_dir() else None


def trial_summary(trial, metric: str) -> dict[str, Any]:
    result = getattr(trial, "last_result", None) or {}
    return {"trial_id": trial.trial_id, "status": trial.status, "config": dict(trial.config),
            "epochs": result.get("epoch", 0), "best": result.get(f"best_{metric}"),
            "val_accuracy": result.get("val_accuracy"), "val_balanced_accuracy": result.get("val_balanced_accuracy")}
