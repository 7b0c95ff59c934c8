"""Tuning: a study's plan, what runs in each trial, the searcher and scheduler, and running the study.

The exports load on first use: every trial process imports `leukotune.tuner.tune.trainable`, and eager imports
here would load the driver's side (MLflow, matplotlib, Optuna, pandas: seconds per process) into each of them.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .packing import check_packing as check_packing
    from .plan import StudyPlan as StudyPlan
    from .plan import plan_study as plan_study
    from .study import StudyOutcome as StudyOutcome
    from .study import run_study as run_study

_EXPORTS = {"check_packing": "packing", "StudyPlan": "plan", "plan_study": "plan", "StudyOutcome": "study",
            "run_study": "study"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
