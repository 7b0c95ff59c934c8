"""Watching the cluster while a study runs: hand the autoscaler's demand over to Tune, and stop the whole study at
once when a trial finds its node unfit (a GPU it cannot use, a study folder it cannot see).

Such a failure is not the trial's: retrying it, or running the next trial on the same kind of node, fails the same
way and wastes the budget. Tune has no error that skips its retries, so the study stops through a Stopper that a
callback arms when a trial's error names one of these causes.
"""
from __future__ import annotations

from pathlib import Path

from ray import tune

from leukotune.tuner.cluster.scaling import release_request

# Raised in trial processes (tuner/train/ray_sessions.py, tuner/cluster/storage.py); recognised by name in Tune's
# error file, since the exception itself arrives wrapped (RayTaskError, Ray Train's worker group error).
NODE_UNFIT_ERRORS = ("GpuUnusableError", "StorageNotSharedError")

# Why each live study was stopped, by study id: Tune pickles its callbacks and stoppers with the experiment state.
_STOP_REASONS: dict[str, str] = {}


def unfit_reason(error_text: str) -> str | None:
    """The one-line message of a node-unfit error in a trial's error text, else None."""
    for line in reversed(error_text.splitlines()):
        for name in NODE_UNFIT_ERRORS:
            if f"{name}: " in line:
                return line.split(f"{name}: ", 1)[1].strip()
    return None


def stop_reason(study_id: str) -> str | None:
    """Why the study was stopped, once (the study's end reads it)."""
    return _STOP_REASONS.pop(study_id, None)


class StopWhenNodeUnfit(tune.Stopper):
    """Stops every trial once ClusterWatch has seen a node-unfit error in this study."""

    def __init__(self, study_id: str):
        self.study_id = study_id

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.study_id in _STOP_REASONS


class ClusterWatch(tune.Callback):
    """Withdraws the study's explicit request for nodes at its first trial start (Tune's pending trials ask from
    then on), and arms StopWhenNodeUnfit when a trial fails because of its node."""

    def __init__(self, study_id: str):
        self.study_id = study_id
        self.released = False

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        if not self.released:
            release_request()
            self.released = True

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self._check(trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._check(trial)

    def _check(self, trial) -> None:
        path = getattr(trial, "error_file", None)
        try:
            text = Path(path).read_text() if path else ""
        except OSError:
            return
        reason = unfit_reason(text)
        if reason and self.study_id not in _STOP_REASONS:
            _STOP_REASONS[self.study_id] = f"trial {trial.trial_id}: {reason}"
