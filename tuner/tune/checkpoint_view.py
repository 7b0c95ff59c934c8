"""Keep Tune's list of a trial's checkpoints true to the disk after the driver was killed.

Tune saves each trial's checkpoint list in its experiment state every `num_to_keep` checkpoints (Ray 2.60:
`_ExperimentCheckpointManager.on_trial_checkpoint`). A driver killed between two saves has already deleted, as it
kept the newest two, checkpoints that the saved list still holds. On `--resume` the restored trial's next
checkpoint makes Tune delete them again, and Ray's `_delete_fs_path` raises `FileNotFoundError: Path not found`
before its own try block; `TuneController._process_trial_save` logs that as a traceback and skips the rest of its
bookkeeping (the checkpoint index and the next state save). Forgetting the vanished entries when a trial starts
keeps Tune's view consistent, so that path is never taken.
"""
from __future__ import annotations

import pyarrow.fs
from ray import tune

from leukotune.tuner import compat


class ForgetMissingCheckpoints(tune.Callback):
    """Drop checkpoints that no longer exist from a trial's checkpoint list when the trial (re)starts."""

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        if forget_missing_checkpoints(compat.trial_checkpoint_manager(trial)):
            compat.mark_trial_state_changed(trial)  # the trial's saved state is rewritten with the corrected list


def forget_missing_checkpoints(manager) -> int:
    """Remove vanished checkpoints from a Tune trial's `_CheckpointManager`; returns how many were removed."""
    # The latest checkpoint is left alone: it is the one the trial restores from, and Tune reports it itself when
    # it is gone.
    listed, latest = compat.checkpoint_results(manager), compat.latest_checkpoint_result(manager)
    kept = [result for result in listed if result is latest or _exists(result.checkpoint)]
    compat.replace_checkpoint_results(manager, kept)
    return len(listed) - len(kept)


def _exists(checkpoint) -> bool:
    info = checkpoint.filesystem.get_file_info(checkpoint.path)
    return info.type != pyarrow.fs.FileType.NotFound
