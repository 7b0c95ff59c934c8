"""What a study keeps on shared storage once its trials have ended: only what it can still use.

Every trial leaves up to two checkpoint folders (Tune's `num_to_keep`), each with `state.pt` (for resuming) and
`best.pt` (the best epoch's whole network). Once a trial has ended for good, resuming it is over; of what it leaves,
the study still reads only the best checkpoint of its top trials: the models exported at the end
(`tracking.log_models`) and the trials scored on the test side (`tune.test_top_k`). A trial outside the top can
never come back into it, since trials that end later only add rivals. A 200-trial smoke study kept 1.5 GB before
this; what it keeps now is in docs/cluster.md ("How much a study keeps on shared storage").
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from leukotune.tuner.tracking.trial_runs import checkpoint_dir_of, top_trials
from leukotune.tuner.train.checkpoints import MANIFEST_FILE, STATE_FILE

_CHECKPOINT_FOLDER = re.compile(r"checkpoint_\d+")


@dataclass(frozen=True)
class Pruned:
    trials: int  # trials whose checkpoints were thinned or removed
    removed_bytes: int


def trials_to_keep(study) -> int | str:
    """How many top trials keep their best checkpoint: enough for the export and for the test side ("all" when
    every trial's model is exported)."""
    log_models = study.tracking.log_models
    return "all" if log_models == "all" else max(int(log_models), study.tune.test_top_k)


def prune_checkpoints(trials: Iterable[Any], metric: str, mode: str, keep: int | str, *, study_complete: bool,
                      log: Callable[[str], None] = print) -> Pruned:
    """Remove what no ended trial can still be used for: every checkpoint folder of a trial outside the top `keep`,
    and of a top trial all but its newest folder's best.pt (and manifest).

    Ended: TERMINATED; ERROR too once the study is complete (before that, `--resume` restarts errored trials from
    their checkpoint). Running, paused and pending trials are left alone. Only folders named `checkpoint_<n>`
    holding leukotune's manifest are ever removed. Call it once the trials' MLflow records are written (a trial's
    learning curves are read from its state.pt): after `TrialRecorder.close()`. Calling it again removes nothing
    more.
    """
    trials = list(trials)
    top = {trial.trial_id for trial in top_trials(trials, metric, mode, keep)}
    ended = ("TERMINATED", "ERROR") if study_complete else ("TERMINATED",)
    count, removed = 0, 0
    for trial in trials:
        latest = checkpoint_dir_of(trial) if trial.status in ended else None
        if latest is None:
            continue
        folders = [f for f in _checkpoint_folders(latest.parent) if f != latest or trial.trial_id not in top]
        freed = sum(_remove(folder) for folder in folders)
        if trial.trial_id in top and (latest / STATE_FILE).is_file():
            freed += _remove(latest / STATE_FILE)
        count += freed > 0
        removed += freed
    if removed:
        log(f"checkpoints: kept the best model of {len(top)} top trial(s); removed {removed / 2**20:.0f} MiB "
            f"that no ended trial can use")
    return Pruned(count, removed)


def prune_finished_trial(trial: Any, trials: Iterable[Any], metric: str, mode: str, keep: int | str) -> int:
    """While the study runs: remove every checkpoint folder of a trial that finished outside the top `keep`.

    A trial outside the top when it finishes stays outside (later trials only add rivals), so nothing the study
    will export or score is lost, and a long study holds the checkpoints of its top trials and its running ones, not
    of every trial that has run. Returns the bytes freed. The top trials are thinned at the end
    (`prune_checkpoints`)."""
    if keep == "all" or trial.status != "TERMINATED":
        return 0
    latest = checkpoint_dir_of(trial)
    if latest is None or trial.trial_id in {t.trial_id for t in top_trials(list(trials), metric, mode, keep)}:
        return 0
    return sum(_remove(folder) for folder in _checkpoint_folders(latest.parent))


def _checkpoint_folders(trial_dir: Path) -> list[Path]:
    return sorted(p for p in trial_dir.iterdir()
                  if p.is_dir() and _CHECKPOINT_FOLDER.fullmatch(p.name) and (p / MANIFEST_FILE).is_file())


def _remove(path: Path) -> int:
    """Delete a file or folder; returns the bytes it held."""
    if path.is_file():
        size = path.stat().st_size
        path.unlink()
        return size
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    shutil.rmtree(path)
    return size
