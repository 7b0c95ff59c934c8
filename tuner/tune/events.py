"""Tune's trial events, delivered to the study running in this driver: its MLflow recorder, its console, and its
watch on the cluster.

Tune pickles its callbacks and stoppers into the experiment state and restores them from there on `--resume`;
the recorder holds an MLflow client and a thread pool, the console a terminal stream, and neither pickles. So the
one callback and the stopper carry only the study id and find the study's live parts here, where `attach` puts them
for as long as the study runs.

The watch: the explicit request for nodes made while the study waited for its first worker is withdrawn at the
first trial start (Tune's pending trials ask from then on), and the whole study stops at once when a trial finds
its node unfit (a GPU it cannot use, a study folder it cannot see). Such a failure is not the trial's: retrying it,
or running the next trial on the same kind of node, fails the same way and wastes the budget. Tune has no error that
skips its retries, so the study stops through a Stopper that the callback arms.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ray import tune

from leukotune.tuner.cluster.scaling import release_request
from leukotune.tuner.tracking.trial_runs import TrialRecorder
from leukotune.tuner.tune.console import StudyConsole

# Raised in trial processes (tuner/train/ray_sessions.py, tuner/cluster/storage.py); recognised by name in Tune's
# error file, since the exception itself arrives wrapped (RayTaskError, Ray Train's worker group error).
NODE_UNFIT_ERRORS = ("GpuUnusableError", "StorageNotSharedError")


@dataclass
class LiveStudy:
    """What a running study's events reach, in this driver."""

    recorder: TrialRecorder
    console: StudyConsole
    stopped: str | None = None  # why a node unfit for the study's trials stopped it (None: it was not)
    request_released: bool = False


_LIVE: dict[str, LiveStudy] = {}


def attach(study_id: str, recorder: TrialRecorder, console: StudyConsole) -> LiveStudy:
    """Make the study's recorder and console the ones its callback and stopper reach, until `detach`."""
    _LIVE[study_id] = LiveStudy(recorder, console)
    return _LIVE[study_id]


def detach(study_id: str) -> None:
    _LIVE.pop(study_id, None)


class StudyEvents(tune.Callback):
    """Each trial event, in order: MLflow first (the run exists before a line names it), then the console, then
    the watch on the cluster."""

    def __init__(self, study_id: str):
        self.study_id = study_id

    @property
    def live(self) -> LiveStudy:
        return _LIVE[self.study_id]

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        self.live.recorder.trials = trials
        self.live.console.refresh(trials)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        live = self.live
        live.recorder.run_for(trial)
        live.console.trial_started(trial)
        if not live.request_released:
            release_request()
            live.request_released = True

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        # An epoch Tune replays after a restart is neither logged nor printed again.
        if self.live.recorder.record_result(trial, result):
            self.live.console.trial_epoch(trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.live.recorder.record_complete(trial)
        self.live.console.trial_ended(trial, trials)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.live.recorder.record_error(trial)
        self.live.console.trial_failed(trial, trials)
        self._check_node(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self.live.console.trial_retried(trial)
        self._check_node(trial)

    def _check_node(self, trial) -> None:
        path = getattr(trial, "error_file", None)
        try:
            text = Path(path).read_text() if path else ""
        except OSError:
            return
        reason = unfit_reason(text)
        if reason and self.live.stopped is None:
            self.live.stopped = f"trial {trial.trial_id}: {reason}"


class StopWhenNodeUnfit(tune.Stopper):
    """Stops every trial once the study's events have seen a node-unfit error."""

    def __init__(self, study_id: str):
        self.study_id = study_id

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        live = _LIVE.get(self.study_id)
        return live is not None and live.stopped is not None


def unfit_reason(error_text: str) -> str | None:
    """The one-line message of a node-unfit error in a trial's error text, else None."""
    for line in reversed(error_text.splitlines()):
        for name in NODE_UNFIT_ERRORS:
            if f"{name}: " in line:
                return line.split(f"{name}: ", 1)[1].strip()
    return None
