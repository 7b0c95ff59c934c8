"""After the search: the best trials by validation, each scored once on the untouched test side.

The search picks the best of many validation scores, and the best of many is the luckiest, not the truest. The
test side (subjects no trial ever trained or was selected on) gives the number to report; the selection gap (the
winner's validation score minus its test score) says how much the selection flattered it. Scoring runs as one Ray
task on the cluster (with a GPU when the study uses GPUs), so the driver only reads checkpoints and logs.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable

import numpy as np
import ray

from leukotune.tuner.cluster.trial_resources import TrialResources
from leukotune.tuner.evaluation.calibration import CELL_SCORES_FILE, TEMPERATURE_METRIC, calibrate, reliability
from leukotune.tuner.evaluation.test_side import CELL_SCORES, score_checkpoints
from leukotune.tuner.metrics import metric_on_test, ranking_key
from leukotune.tuner.tracking.artifacts import RELIABILITY_FIGURE, reliability_figure
from leukotune.tuner.tracking.client import Tracker
from leukotune.tuner.tracking.trial_runs import checkpoint_dir_of, top_trials
from leukotune.tuner.train.checkpoints import load_best

TAG_TEST_WINNER = "leukotune.test_winner_trial"
TAG_TEST_RANK = "leukotune.test_rank"
SELECTION_GAP = "selection_gap"


# By reference to tuner/evaluation/test_side.py: the task's process imports that lean module, not this driver one.
_score_remote = ray.remote(score_checkpoints)


def _best_value(trial, metric: str) -> Any:
    return (getattr(trial, "last_result", None) or {}).get(f"best_{metric}")


def _readable_checkpoints(trials: list, log: Callable[[str], None]) -> list[tuple[Any, dict[str, Any]]]:
    """(trial, best checkpoint) for each trial whose checkpoint passes its checksum. The driver reads them and sends
    them along, so the scoring task can run on any node."""
    found = []
    for trial in trials:
        try:
            found.append((trial, load_best(checkpoint_dir_of(trial))))
        except Exception as exc:  # noqa: BLE001 - one unreadable checkpoint must not cost the others their numbers
            log(f"WARNING: no test evaluation of trial {trial.trial_id}: {exc}")
    return found


def score_top_trials(plan, trials: list, run_ids: dict[str, str], tracker: Tracker, parent_run_id: str,
                     resources: TrialResources, log: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """Score the study's top `tune.test_top_k` trials on the test side, log `test_*` to their runs and the
    winner's (the best by validation) to the parent with the selection gap; returns metrics by trial id."""
    study = plan.study
    metric, mode, k = study.tune.metric, study.tune.mode, study.tune.test_top_k
    test_cells = plan.data_summary.cells_on("test")
    if k == 0 or test_cells == 0:
        log("no test evaluation: " + ("tune.test_top_k is 0" if k == 0 else "the data has no test side"))
        return {}
    # The same ranking (ties to the smaller trial id) as the leaderboard and the exported models.
    chosen = [t for t in top_trials(trials, metric, mode, k) if checkpoint_dir_of(t) is not None]
    readable = _readable_checkpoints(chosen, log)
    if not readable:
        return {}
    # The test side is scored where a trial would run: one trial's share of a node.
    share = {"num_cpus": resources.cpus_per_worker, "num_gpus": resources.gpus_per_worker}
    try:
        scored = ray.get(_score_remote.options(**share).remote([best for _, best in readable],
                                                                   seed=study.data.seed))
    except Exception as exc:  # noqa: BLE001 - the study's results stand; only the test numbers are missing
        log(f"WARNING: test evaluation failed: {str(exc).strip().splitlines()[-1]}")
        return {}
    results: dict[str, dict[str, float]] = {}
    for (trial, _), returned in zip(readable, scored):
        if isinstance(returned, str):
            log(f"WARNING: test evaluation of trial {trial.trial_id} failed: {returned}")
            continue
        scores = dict(returned)
        cells = scores.pop(CELL_SCORES, None)
        results[trial.trial_id] = scores
        if trial.trial_id in run_ids:
            tracker.log_metrics(run_ids[trial.trial_id], scores, step=0)
            tracker.set_tags(run_ids[trial.trial_id], {TAG_TEST_RANK: str(chosen.index(trial) + 1)})
            if cells is not None:
                log_calibration(tracker, run_ids[trial.trial_id], trial.trial_id, cells)
    if chosen and chosen[0].trial_id in results:
        _log_winner(tracker, parent_run_id, chosen[0], results[chosen[0].trial_id], metric, mode, log)
    return results


def log_calibration(tracker: Tracker, run_id: str, trial_id: str, cells: dict[str, Any]) -> None:
    """The trial's per-cell P(ALL) (for promote's operating point) and its test side's reliability diagram, as
    trained and calibrated."""
    tracker.log_text(run_id, json.dumps(cells, separators=(",", ":")), CELL_SCORES_FILE)  # compact: 2 lists per side
    test = cells["test"]
    prob, labels = np.asarray(test["p_all"]), np.asarray(test["labels"])
    temperature = float(cells["temperature"])
    figure = reliability_figure(reliability(prob, labels), reliability(calibrate(prob, temperature), labels),
                                temperature, f"{trial_id}: test side, calibrated on {_side_name(cells)}")
    tracker.log_figure(run_id, figure, RELIABILITY_FIGURE)


def _side_name(cells: dict[str, Any]) -> str:
    return "out-of-fold validation" if str(cells.get("fitted_on", "")).startswith("out-of-fold") else "validation"


def _log_winner(tracker: Tracker, parent_run_id: str, winner, scores: dict[str, float], metric: str, mode: str,
                log: Callable[[str], None]) -> None:
    test_name = metric_on_test(metric)
    logged = dict(scores)
    gap = selection_gap(_best_value(winner, metric), scores.get(test_name), mode)
    if gap is not None:
        logged[SELECTION_GAP] = gap
    tracker.log_metrics(parent_run_id, logged, step=0)
    tracker.set_tags(parent_run_id, {TAG_TEST_WINNER: winner.trial_id})
    low, high = scores.get(f"{test_name}_ci95_low"), scores.get(f"{test_name}_ci95_high")
    interval = f" (95% CI by patient {low:.4f}-{high:.4f})" if low is not None and high is not None else ""
    folds = (getattr(winner, "last_result", None) or {}).get("cv_folds")
    where = f"validation (mean of {folds} folds)" if folds else "validation"
    log(f"test side: trial {winner.trial_id} {metric} {_best_value(winner, metric):.4f} on {where}, "
        f"{test_name} {scores.get(test_name, float('nan')):.4f}{interval} on test"
        + (f"; selection gap {gap:+.4f}" if gap is not None else ""))
    if TEMPERATURE_METRIC in scores:
        fitted_on = "out-of-fold validation" if folds else "validation"
        log(f"calibration: temperature {scores[TEMPERATURE_METRIC]:.3f} fitted on {fitted_on}; on test "
            f"ECE {scores['test_ece']:.4f} -> {scores['test_ece_calibrated']:.4f}, Brier "
            f"{scores['test_brier']:.4f} -> {scores['test_brier_calibrated']:.4f}")


def selection_gap(val_value: Any, test_value: Any, mode: str) -> float | None:
    """How much better validation made the winner look than test: positive when validation flattered it."""
    if ranking_key(val_value, mode)[0] or test_value is None or not math.isfinite(test_value):
        return None
    return float(val_value - test_value) if mode == "max" else float(test_value - val_value)


def add_test_scores(rows: list[dict[str, Any]], results: dict[str, dict[str, float]], metric: str) -> None:
    """Put each evaluated trial's test score (and its interval) beside its validation score in the leaderboard."""
    if not results:
        return  # no test evaluation: no test column, rather than one of blanks
    test_name = metric_on_test(metric)
    for row in rows:
        scores = results.get(row["trial_id"], {})
        row["test"] = scores.get(test_name)
        row["test_ci95"] = ([scores[f"{test_name}_ci95_low"], scores[f"{test_name}_ci95_high"]]
                            if f"{test_name}_ci95_low" in scores else None)
