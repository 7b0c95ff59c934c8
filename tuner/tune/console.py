"""Everything `leukotune tune` and `leukotune train` print (Ray's own chatter is kept off by tuner/process.py).

A study prints its data and sides, one plain line per trial event (started, epoch, stopped early, finished, failed),
and on a terminal a live status line under them (tqdm draws it and writes event lines above it); not on a terminal
(CI logs, Ray Job logs) there is no live line, and each trial's end line carries the same counts instead. At its end
come the leaderboard and where MLflow holds the records. A training run prints its data and its final metrics.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm

from leukotune.data import CLASS_NAMES
from leukotune.tuner.metrics import format_value, is_better, undefined_metrics
from leukotune.tuner.tracking.client import redact, training_view_url

STATUS_REFRESH_S = 1.0


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

    def trial_epoch(self, trial, result: dict) -> None:
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        spread = result.get(f"{self.metric}_std")
        folds = f" ± {spread:.4f} over {result.get('cv_folds')} folds" if spread is not None else ""
        self.log(f"trial {trial.trial_id} epoch {epoch}/{self.epochs}  {self.metric} "
                 f"{result.get(self.metric, float('nan')):.4f}{folds}  "
                 f"val_acc {result.get('val_accuracy', float('nan')):.4f}")

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

    def models_logged(self, trial_ids: list[str]) -> None:
        if trial_ids:
            self.log(f"logging the models of the top {len(trial_ids)} trial(s) by {self.metric}: "
                     f"{', '.join(trial_ids)}")

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


# ---------------------------------------------------------------- before and after a study

def print_study_data(data) -> None:
    """The study's data (a DataSummary) and its sides; the test side is untouched until the search ends."""
    skipped = data.skipped
    print(f"data: {data.cells} cells of {data.subjects} subjects{' (synthetic)' if data.synthetic else ''}; "
          f"{len(skipped)} files skipped" + (f" (first: {skipped[0].path}: {skipped[0].reason})" if skipped else ""))
    sides = ("test",) if data.folds else ("train", "val", "test")
    parts = [f"{side} {data.cells_on(side)} cells/{len(data.split_subjects.get(side, []))} subjects" for side in sides]
    source = {"prelim": "the C-NMC preliminary test folder", "subjects": "subjects set aside",
              "none": "none (data.test_fraction 0)"}.get(data.test_source, "?")
    if data.folds:
        folds = ", ".join(f"{fold['cells']}/{fold['subjects']}" for fold in data.folds)
        parts.insert(0, f"{len(data.folds)} validation folds of cells/subjects {folds} (each fold's model trains "
                        f"on the others)")
    method = f"{data.split_method} split" + (f", {len(data.folds)}-fold cross-validation" if data.folds else "")
    print(f"sides ({method}): {', '.join(parts)}; test side: {source}")


def print_leaderboard(rows: list[dict[str, Any]], metric: str) -> None:
    print(f"\nleaderboard ({metric}, best epoch of each trial; test: the top trials once on the held-out subjects,"
          f" 95% CI by patient)")
    print(f"  {'rank':<5}{'trial':<12}{'status':<12}{'epochs':<8}{metric:<18}{'test (95% CI)':<24}{'last_acc':<9}"
          f"{'device':<8}params")
    for rank, row in enumerate(rows, 1):
        best_text = _best_text(row)
        acc = row.get("val_accuracy")
        acc_text = f"{acc:.4f}" if isinstance(acc, (int, float)) else "-"
        params = " ".join(f"{k}={_param(v)}" for k, v in row["config"].items())
        device = str(row.get("device") or "-").split(" ")[0]  # cuda:0, not the GPU's name
        print(f"  {rank:<5}{row['trial_id']:<12}{row['status']:<12}{row['epochs']!s:<8}{best_text:<18}"
              f"{_test_text(row):<24}{acc_text:<9}{device:<8}{params}")


def _best_text(row: dict[str, Any]) -> str:
    """The trial's best value; `mean ± spread` for a cross-validated trial."""
    best, spread = row.get("best"), row.get("best_std")
    if not isinstance(best, (int, float)):
        return "-"
    return f"{best:.4f} ± {spread:.3f}" if isinstance(spread, (int, float)) else f"{best:.4f}"


def _test_text(row: dict[str, Any]) -> str:
    test, interval = row.get("test"), row.get("test_ci95")
    if not isinstance(test, (int, float)):
        return "-"
    return f"{test:.4f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{test:.4f}"


def _param(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def print_tracking_help(outcome) -> None:
    """Where the study's records are (a StudyOutcome), and how to open them."""
    uri = outcome.tracking_uri
    print(f"\nMLflow: experiment {outcome.experiment_id}, parent run {outcome.parent_run_id} at {redact(uri)}")
    if uri.startswith("sqlite:"):
        print(f"open the UI with: .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
              f"  (then {training_view_url('http://127.0.0.1:5000', outcome.experiment_id)})")
    else:
        print(f"open {training_view_url(redact(uri), outcome.experiment_id)}")


def print_finished_study(study_id: str, outcome, metric: str) -> None:
    """`--resume` of a study that already completed (its saved StudyOutcome)."""
    print(f"study {study_id} already finished ({len(outcome.leaderboard)} trials); nothing to resume. "
          f"Start a new study by leaving out --resume.")
    print_leaderboard(outcome.leaderboard, metric)
    print_tracking_help(outcome)


# ---------------------------------------------------------------- one training run (`leukotune train`)

def print_training_data(data) -> None:
    print(f"data: {data.cells} cells ({data.all} ALL, {data.hem} hem) of {data.subjects} subjects"
          f"{', synthetic' if data.synthetic else ''}; {len(data.skipped)} files skipped")


def print_final_metrics(metrics: dict[str, Any], metric: str) -> None:
    keys = ["epoch", "best_epoch", f"best_{metric}", "val_accuracy", "val_balanced_accuracy", "val_roc_auc",
            "val_f1_weighted", "val_f1_macro", "val_precision_all", "val_recall_all", "val_precision_hem",
            "val_recall_hem", "val_loss", "train_loss"]
    print("\nfinal metrics")
    reasons = undefined_metrics(metrics, prefix="val_")  # e.g. precision_hem when no cell was called hem
    for key in keys:
        if key in metrics:
            print(f"  {key:<24} {format_value(metrics[key], reasons.get(key))}")
    cm = [[metrics.get(f"val_cm_true_{t}_pred_{p}", 0) for p in CLASS_NAMES] for t in CLASS_NAMES]
    names = "/".join(CLASS_NAMES)
    print(f"  confusion (rows true {names}, cols predicted {names}): {cm}")
