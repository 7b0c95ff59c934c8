"""What `leukotune tune` prints while a study runs: leukotune's own lines and nothing of Ray's chatter.

One plain line per trial event (started, epoch, stopped early, finished, failed), and on a terminal a live status
line under them (tqdm draws it and writes event lines above it). Not on a terminal (CI logs, Ray Job logs) there is
no live line; each trial's end line carries the same counts instead.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any, TextIO

from ray import tune
from tqdm import tqdm

from leukotune.tuner.compat import RAY_AUTH_TOKEN_LOGGER
from leukotune.tuner.metrics import is_better

TOKEN_LOGGER = RAY_AUTH_TOKEN_LOGGER
SLOW_STEP_LOGGER = "ray.tune.utils.util"  # `warn_if_slow`: "... may be a performance bottleneck"
STATUS_REFRESH_S = 1.0


def quiet_ray_console() -> None:
    """Silence what Ray, Tune and MLflow print on their own; call before `ray.init` and `Tuner.fit`.

    Ray 2.60's new output engine (`ray.tune.experimental.output`) prints the "Configuration for experiment" box,
    "View detailed results here" and the TensorBoard hint at every verbosity, even `RunConfig(verbose=0)`; the old
    engine (`RAY_AIR_NEW_OUTPUT=0`, read by `get_air_verbosity` in `tune.run`) prints nothing at verbosity 0.
    """
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # The notice that token authentication is on (the safe default, which leukotune keeps) is dropped; the warning
    # that it is off is not.
    logging.getLogger(TOKEN_LOGGER).addFilter(_drop_token_enabled_notice)
    # Tune times its own steps and warns past 0.5 s, read from TUNE_WARN_THRESHOLD_S when ray.tune is imported
    # (too early to set here). On a busy 2-core node that is every few trials, and nothing a user can act on.
    logging.getLogger(SLOW_STEP_LOGGER).addFilter(_drop_slow_step_warning)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables"
    # Optuna's parallel-coordinate plot when every trial scored the same; the plot is still logged.
    warnings.filterwarnings("ignore", message="Attempting to set identical low and high ylims")


def changing_line(stream: TextIO | None = None) -> Callable[..., None]:
    """A status line that changes: rewritten in place on a terminal (its `final` text ends the line), else printed
    again only when it changes."""
    stream = stream or sys.stdout
    shown = {"text": "", "width": 0}

    def show(text: str, final: bool = False) -> None:
        if text == shown["text"]:
            return
        if stream.isatty():
            stream.write("\r" + text.ljust(shown["width"]) + ("\n" if final else ""))
        else:
            stream.write(text + "\n")
        stream.flush()
        shown.update(text=text, width=len(text))

    return show


def _drop_token_enabled_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Token authentication is enabled")


def _drop_slow_step_warning(record: logging.LogRecord) -> bool:
    return "may be a performance bottleneck" not in str(record.msg)


class StudyConsole:
    """Trial event lines and, on a terminal, a live status line: done/running/pending/stopped, best, elapsed, ETA."""

    def __init__(self, total: int, metric: str, mode: str, epochs: int, scheduler: str,
                 stream: TextIO | None = None, live: bool | None = None, log: Callable[[str], None] | None = None):
        """`log`, when given, receives the event lines instead of `stream` (and there is no live line)."""
        self.total, self.metric, self.mode, self.epochs, self.scheduler = total, metric, mode, epochs, scheduler
        self.stream, self._log = stream or sys.stdout, log
        self.live = (log is None and self.stream.isatty()) if live is None else live
        self.started_at = time.monotonic()
        # How each trial ended in this run: Tune calls our hooks before it sets the trial's status. Their count also
        # sets the pace for the estimate (a resumed study's earlier trials do not).
        self.outcomes: dict[str, str] = {}
        self.trials: list = []
        self._drawn_at = 0.0
        self._bar = tqdm(total=total, file=self.stream, bar_format="{desc}", leave=False) if self.live else None

    def log(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        elif self._log is not None:
            self._log(line)
        else:
            print(line, file=self.stream, flush=True)

    # ------------------------------------------------------------ trial events
    def trial_started(self, trial) -> None:
        params = " ".join(f"{key}={_short(value)}" for key, value in dict(trial.config).items())
        self.log(f"trial {trial.trial_id} started  {params}")

    def trial_ended(self, trial, trials: list) -> None:
        self.trials = trials
        result = getattr(trial, "last_result", None) or {}
        epoch, best = int(result.get("epoch", 0)), result.get(f"best_{self.metric}")
        self.outcomes[trial.trial_id] = "stopped" if epoch < self.epochs else "done"
        what = (f"stopped by {self.scheduler.upper()} after epoch {epoch}/{self.epochs}" if epoch < self.epochs
                else "finished")
        self.log(f"trial {trial.trial_id} {what}  best {self.metric} {_short(best)}  ({self.status_text()})")
        self.refresh(trials, force=True)

    def trial_failed(self, trial, trials: list) -> None:
        self.trials = trials
        self.outcomes[trial.trial_id] = "failed"
        error = getattr(trial, "error_file", None) or "no error file"
        self.log(f"trial {trial.trial_id} failed (error: {error})  ({self.status_text()})")
        self.refresh(trials, force=True)

    def trial_retried(self, trial) -> None:
        self.log(f"trial {trial.trial_id} failed; Tune restarts it from its last checkpoint")

    # ------------------------------------------------------------ status
    def refresh(self, trials: list, force: bool = False) -> None:
        """Redraw the live line (at most once a second unless forced); nothing when not on a terminal."""
        self.trials = trials
        now = time.monotonic()
        if self._bar is None or (not force and now - self._drawn_at < STATUS_REFRESH_S):
            return
        self._drawn_at = now
        self._bar.set_description_str(self.status_text(), refresh=True)

    def status_text(self) -> str:
        counts = count_trials(self.trials, self.total, self.epochs, self.outcomes)
        best, best_trial = best_so_far(self.trials, self.metric, self.mode)
        elapsed = time.monotonic() - self.started_at
        ended = counts["done"] + counts["stopped"] + counts["failed"]
        text = (f"{ended}/{self.total} trials ended ({counts['stopped']} stopped early, {counts['failed']} failed), "
                f"{counts['running']} running, {counts['pending']} pending")
        if best_trial:
            text += f"; best {self.metric} {_short(best)} (trial {best_trial})"
        text += f"; elapsed {_duration(elapsed)}"
        if self.outcomes and ended < self.total:
            text += f", about {_duration(elapsed / len(self.outcomes) * (self.total - ended))} left"
        return text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def count_trials(trials: list, total: int, epochs: int, outcomes: dict[str, str]) -> dict[str, int]:
    """Trials by state; `stopped` are those the scheduler ended before their last epoch. `outcomes` (trial id ->
    done/stopped/failed) wins over a status Tune has not updated yet."""
    counts = {"done": 0, "stopped": 0, "failed": 0, "running": 0, "pending": 0}
    for trial in trials:
        if trial.trial_id in outcomes:
            counts[outcomes[trial.trial_id]] += 1
        elif trial.status == "TERMINATED":
            epoch = int((getattr(trial, "last_result", None) or {}).get("epoch", epochs))
            counts["stopped" if epoch < epochs else "done"] += 1
        elif trial.status == "ERROR":
            counts["failed"] += 1
        elif trial.status == "RUNNING":
            counts["running"] += 1
        else:
            counts["pending"] += 1
    counts["pending"] += max(0, total - len(trials))  # not yet suggested by the searcher
    return counts


def best_so_far(trials: list, metric: str, mode: str) -> tuple[Any, str | None]:
    best, best_trial = None, None
    for trial in trials:
        value = (getattr(trial, "last_result", None) or {}).get(f"best_{metric}")
        if is_better(value, best, mode):
            best, best_trial = value, trial.trial_id
    return best, best_trial


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else ("-" if value is None else str(value))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


# Live consoles by study id: Tune pickles its callbacks into the experiment state, and a console holds a stream.
_CONSOLES: dict[str, StudyConsole] = {}


class ConsoleCallback(tune.Callback):
    """The picklable face of a StudyConsole: forwards Tune's trial events to the live console of its study."""

    def __init__(self, study_id: str, console: StudyConsole):
        self.study_id = study_id
        _CONSOLES[study_id] = console

    def __getstate__(self) -> dict[str, str]:
        return {"study_id": self.study_id}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.study_id = state["study_id"]

    @property
    def console(self) -> StudyConsole | None:
        return _CONSOLES.get(self.study_id)

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if self.console:
            self.console.refresh(trials)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        if self.console:
            self.console.trial_started(trial)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        if self.console:
            self.console.trial_ended(trial, trials)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        if self.console:
            self.console.trial_failed(trial, trials)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        if self.console:
            self.console.trial_retried(trial)


def release_console(study_id: str) -> None:
    console = _CONSOLES.pop(study_id, None)
    if console is not None:
        console.close()
