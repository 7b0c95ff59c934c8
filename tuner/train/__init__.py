"""Training: the one loop shared by `leukotune train` and every Tune trial, its checkpoints, metrics and sessions.

The exports load on first use, as in `tuner/tune/`: the loop, the input pipeline and the checkpoints import with
torch alone (a bare GPU machine runs bench/gpu_bench.py with nothing else), while sessions and `make_trainer` need
Ray and the data source needs the study schema (pydantic).
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checkpoints import BEST_FILE as BEST_FILE
    from .checkpoints import STATE_FILE as STATE_FILE
    from .checkpoints import CheckpointError as CheckpointError
    from .checkpoints import read_checkpoint_file as read_checkpoint_file
    from .data_source import prepare_study_data as prepare_study_data
    from .data_source import resolve_data_root as resolve_data_root
    from .loop import run_training as run_training
    from .memory import estimate_trial_memory as estimate_trial_memory
    from .pipeline import DeviceSplit as DeviceSplit
    from .pipeline import resolve_pipeline as resolve_pipeline
    from .ray_train import make_trainer as make_trainer
    from .sessions import LocalSession as LocalSession

_EXPORTS = {"BEST_FILE": "checkpoints", "STATE_FILE": "checkpoints", "CheckpointError": "checkpoints",
            "read_checkpoint_file": "checkpoints", "prepare_study_data": "data_source",
            "resolve_data_root": "data_source", "run_training": "loop", "estimate_trial_memory": "memory",
            "DeviceSplit": "pipeline", "resolve_pipeline": "pipeline", "make_trainer": "ray_train",
            "LocalSession": "sessions"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
