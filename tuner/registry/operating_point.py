"""A promoted model's operating point: the temperature the test side fitted on its validation side, and a decision
threshold chosen at promote on those same validation cells for the user's target (`--sensitivity` or
`--specificity`; neither: the default 0.5 on calibrated P(ALL), which calls the same cells as 0.5 as trained).

Both travel as version tags (`leukotune.temperature`, `leukotune.threshold`, `leukotune.operating_point`) that
`load_model` puts into the `TrainedModel`, so `predict` and `evaluate` give calibrated P(ALL) and decide at the
threshold. Test sensitivity and specificity at the threshold, with the patient-bootstrap interval, are computed
from the test cells' scores and recorded beside them; test cells never choose anything.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from leukotune.tuner.evaluation.calibration import (
    CELL_SCORES_FILE,
    TAG_CALIBRATION,
    TAG_OPERATING_POINT,
    TAG_TEMPERATURE,
    TAG_THRESHOLD,
    OperatingPoint,
    TargetUnmetError,
    calibrate,
    choose_threshold,
    rates_with_intervals,
)

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

TAG_PREFIX = "operating_point."  # the rates at the threshold, as version tags `operating_point.test_sensitivity`...
UNCALIBRATED = "none"


class OperatingPointError(ValueError):
    """No operating point can be chosen for the run as asked (no validation scores, or a target it cannot meet)."""


@dataclass(frozen=True)
class Decision:
    """What a registered version decides with: its temperature, its threshold, and the numbers behind them."""

    temperature: float
    calibration: str  # how the temperature was fitted, or "none"
    point: OperatingPoint
    test: dict[str, float] = field(default_factory=dict)  # sensitivity/specificity (+ intervals) at the threshold

    @property
    def calibrated(self) -> bool:
        return self.calibration != UNCALIBRATED

    def tags(self) -> dict[str, str]:
        """The version tags: exact temperature and threshold (repr, so the stored threshold calls the validation
        cells exactly as chosen), the target, and the rates."""
        tags = {TAG_TEMPERATURE: repr(float(self.temperature)), TAG_THRESHOLD: repr(float(self.point.threshold)),
                TAG_OPERATING_POINT: self.point.describe(), TAG_CALIBRATION: self.calibration}
        rates = {"val_sensitivity": self.point.val_sensitivity, "val_specificity": self.point.val_specificity,
                 **{f"test_{k}": v for k, v in self.test.items()}}
        tags.update({f"{TAG_PREFIX}{k}": f"{v:.6g}" for k, v in rates.items() if math.isfinite(v)})
        return tags

    def lines(self) -> list[str]:
        """For the terminal: the calibration, the threshold and why, and test rates at it with their intervals."""
        calibration = (f"P(ALL) calibrated with temperature {self.temperature:.3f} (fitted on "
                       f"{self.calibration.split(' (')[0]})"
                       if self.calibrated else "P(ALL) uncalibrated (temperature 1.0: the run has no validation "
                                               "scores)")
        point = self.point
        lines = [calibration,
                 f"operating point: ALL at P(ALL) >= {point.threshold:.4f} ({point.describe()}; there sensitivity "
                 f"{_text(point.val_sensitivity)}, specificity {_text(point.val_specificity)})"]
        if point.warning:
            lines.append(f"WARNING: the target is {point.warning}")
        if self.test:
            lines.append("at that threshold on test: " + ", ".join(
                f"{name} {_text(self.test[name])} (95% CI by patient {_text(self.test[f'{name}_ci95_low'])}-"
                f"{_text(self.test[f'{name}_ci95_high'])})" for name in ("sensitivity", "specificity")))
        return lines

    def to_json(self) -> dict[str, Any]:
        point = self.point
        return {"temperature": self.temperature, "calibration": self.calibration, "threshold": point.threshold,
                "operating_point": point.describe(), "target": point.target, "target_value": point.target_value,
                "val_sensitivity": _finite(point.val_sensitivity), "val_specificity": _finite(point.val_specificity),
                "warning": point.warning, "test": {k: _finite(v) for k, v in self.test.items()}}


def _text(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "undefined"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def read_cell_scores(client: MlflowClient, run_id: str) -> dict[str, Any] | None:
    """The test side's per-cell P(ALL) of the run (`calibration/cell_scores.json`), or None when it has none."""
    try:
        with tempfile.TemporaryDirectory(prefix="leukotune-promote-") as tmp:
            with open(client.download_artifacts(run_id, CELL_SCORES_FILE, tmp)) as handle:
                return json.load(handle)
    except Exception:  # noqa: BLE001 - an older run, or one the test side did not score: no calibration
        return None


def decide(client: MlflowClient, run: Run, sensitivity: float | None = None, specificity: float | None = None,
           seed: int = 0) -> Decision:
    """The run's temperature and the threshold for the target, chosen on its validation cells (calibrated); test
    rates at that threshold with their patient-bootstrap intervals."""
    cells = read_cell_scores(client, run.info.run_id)
    if cells is None:
        return _uncalibrated(run, sensitivity, specificity)
    temperature = float(cells["temperature"])
    val, test = cells["validation"], cells["test"]
    try:
        point = choose_threshold(calibrate(np.asarray(val["p_all"]), temperature), np.asarray(val["labels"]),
                                 sensitivity=sensitivity, specificity=specificity)
    except TargetUnmetError as exc:
        raise OperatingPointError(str(exc)) from None
    test_prob = calibrate(np.asarray(test["p_all"]), temperature)
    rates = rates_with_intervals(np.asarray(test["labels"]), test_prob, np.asarray(test["subjects"]),
                                 point.threshold, seed=seed)
    fitted_on = str(cells.get("fitted_on") or "validation")
    return Decision(temperature, fitted_on, point, rates)


def _uncalibrated(run: Run, sensitivity: float | None, specificity: float | None) -> Decision:
    """A run without validation scores: only the default point, with the test side's own rates at 0.5."""
    name = run.info.run_name or run.info.run_id
    if sensitivity is not None or specificity is not None:
        raise OperatingPointError(
            f"{name} ({run.info.run_id}) has no validation scores ({CELL_SCORES_FILE}): it was scored on the test "
            f"side before calibration existed, or not at all; rerun the study to choose an operating point")
    metrics = run.data.metrics
    rates = {key: float(metrics[f"test_{key}"]) for key in
             ("sensitivity", "sensitivity_ci95_low", "sensitivity_ci95_high", "specificity", "specificity_ci95_low",
              "specificity_ci95_high") if f"test_{key}" in metrics}
    return Decision(1.0, UNCALIBRATED, choose_threshold(np.zeros(0), np.zeros(0)),
                    rates if len(rates) == 6 else {})


def stored_point(tags: dict[str, str]) -> str | None:
    """`sensitivity >= 0.95 on validation` as a version's tags record it (None: a version from before)."""
    return tags.get(TAG_OPERATING_POINT)
