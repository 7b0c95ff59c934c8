"""Judging a trained model, in one place: the one inference path (`inference.py`: a network rebuilt from a
checkpoint or a logged model, fed cells preprocessed as it was trained, probabilities, test-time augmentation),
the metrics with intervals from a bootstrap over patients (`intervals.py`), and what calls them: the test side
after a search (`test_side.py`, a Ray task), `leukotune predict` (`predict.py`) and `leukotune evaluate`
(`evaluate.py`), both on a model from the tracking server (`logged_models.py`).

The exports load on first use, as in `tuner/train/`: the test side's Ray task imports `test_side.py`, and eager
imports here would load the driver's side (MLflow) into it.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .evaluate import evaluate_folder as evaluate_folder
    from .inference import TrainedModel as TrainedModel
    from .inference import probabilities as probabilities
    from .intervals import CI_METRICS as CI_METRICS
    from .intervals import metrics_with_intervals as metrics_with_intervals
    from .intervals import patient_bootstrap as patient_bootstrap
    from .logged_models import load_model as load_model
    from .predict import predict_files as predict_files
    from .test_side import score_checkpoints as score_checkpoints

_EXPORTS = {"evaluate_folder": "evaluate", "TrainedModel": "inference", "probabilities": "inference",
            "CI_METRICS": "intervals", "metrics_with_intervals": "intervals", "patient_bootstrap": "intervals",
            "load_model": "logged_models", "predict_files": "predict", "score_checkpoints": "test_side"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
