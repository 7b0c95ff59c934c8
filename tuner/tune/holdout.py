"""After the search: the best trials by validation, each scored once on the untouched test side.

The search picks the best of many validation scores, and the best of many is the luckiest, not the truest. The
test side (subjects no trial ever trained or was selected on) gives the number to report; the selection gap (the
winner's validation score minus its test score) says how much the selection flattered it. Scoring runs as one Ray
task on the cluster (with a GPU when the study uses GPUs), so the driver only reads checkpoints and logs.

Each scored trial's run gets its test metrics (an undefined one as a `leukotune.undefined.<metric>` tag with its
reason, never a NaN number), the patient-level results (`test_patient_*`, the table as `patients.json`), its
calibration records, its saliency figures and the software that scored it.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable

import numpy as np
import ray

from leukotune.tuner.cluster.trial_resources import TrialResources
from leukotune.tuner.evaluation.calibration import CELL_SCORES_FILE, TEMPERATURE_METRIC, calibrate, reliability
from leukotune.tuner.evaluation.patients import PatientResults
from leukotune.tuner.evaluation.saliency import SaliencyReport
from leukotune.tuner.evaluation.software import TAG_SOFTWARE
from leukotune.tuner.evaluation.test_side import (
    CELL_SCORES,
    PATIENTS,
    RECORDS,
    SALIENCY,
    SOFTWARE,
    score_checkpoints,
)
from leukotune.tuner.metrics import format_value, metric_on_test, ranking_key, split_undefined, undefined_metrics
from leukotune.tuner.tracking.artifacts import RELIABILITY_FIGURE, reliability_figure
from leukotune.tuner.tracking.client import TAG_KIND, TAG_STUDY, TAG_TRIAL, Tracker, with_retries
from leukotune.tuner.tracking.saliency_figures import log_saliency
from leukotune.tuner.tracking.trial_runs import checkpoint_dir_of, top_trials
from leukotune.tuner.train.checkpoints import load_best

TAG_TEST_WINNER = "leukotune.test_winner_trial"
TAG_TEST_RANK = "leukotune.test_rank"
SELECTION_GAP = "selection_gap"
PATIENTS_TABLE = "patients.json"


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
    """Score the study's top `tune.test_top_k` trials on the test side, log `test_*` and their records to their
    runs and the winner's (the best by validation) to the parent with the selection gap; returns metrics (NaN
    where undefined) by trial id."""
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
    records: dict[str, dict[str, Any]] = {}
    for (trial, _), returned in zip(readable, scored):
        if isinstance(returned, str):
            log(f"WARNING: test evaluation of trial {trial.trial_id} failed: {returned}")
            continue
        scores = dict(returned)
        records[trial.trial_id] = {key: scores.pop(key, None) for key in RECORDS}
        results[trial.trial_id] = scores
        if trial.trial_id in run_ids:
            log_test_side(tracker, run_ids[trial.trial_id], trial.trial_id, scores, records[trial.trial_id],
                          rank=chosen.index(trial) + 1, log=log)
    forget_earlier_test_ranks(tracker, plan.study_id, {trial.trial_id for trial in chosen})
    if chosen and chosen[0].trial_id in results:
        winner = chosen[0].trial_id
        _log_winner(tracker, parent_run_id, chosen[0], results[winner], records[winner][PATIENTS], metric, mode,
                    log)
        log_winner_records(records[winner], log)
    return results


def forget_earlier_test_ranks(tracker: Tracker, study_id: str, ranked: set[str]) -> None:
    """An extended study's top can change: a trial ranked on the test side before the extension and no longer among
    the top loses its rank tag (its test metrics stay, as what was measured then)."""
    for run in tracker.find_runs(f"tags.`{TAG_STUDY}` = '{study_id}' and tags.`{TAG_KIND}` = 'trial'"):
        if TAG_TEST_RANK in run.data.tags and run.data.tags.get(TAG_TRIAL) not in ranked:
            with_retries(lambda run=run: tracker.client.delete_tag(run.info.run_id, TAG_TEST_RANK), "delete tag",
                         log=tracker.log)


def logged_metrics(scores: dict[str, float], patients: PatientResults | None) -> tuple[dict[str, float],
                                                                                        dict[str, str]]:
    """What MLflow gets of a scored trial's numbers: the defined ones, and for each undefined one (NaN inside) a
    `leukotune.undefined.<metric>` tag with its reason (cells' from the cell confusion counts, patients' from
    the patient ones)."""
    reasons = undefined_metrics(scores, prefix="test_") | (patients.undefined if patients else {})
    return split_undefined(scores, reasons)


def log_test_side(tracker: Tracker, run_id: str, trial_id: str, scores: dict[str, float],
                  records: dict[str, Any], rank: int, log: Callable[[str], None]) -> None:
    """One scored trial's run: its test metrics (undefined ones as tags), rank, software, calibration, patients
    and saliency."""
    defined, undefined_tags = logged_metrics(scores, records[PATIENTS])
    tracker.log_metrics(run_id, defined, step=0)
    software = {f"{TAG_SOFTWARE}{name}": value for name, value in (records[SOFTWARE] or {}).items()}
    tracker.set_tags(run_id, {TAG_TEST_RANK: str(rank), **undefined_tags, **software})
    if records[CELL_SCORES] is not None:
        log_calibration(tracker, run_id, trial_id, records[CELL_SCORES])
    if records[PATIENTS] is not None:
        log_patients_table(tracker, run_id, records[PATIENTS])
    report = records[SALIENCY]
    if isinstance(report, SaliencyReport):
        log_saliency(tracker, run_id, report)
    elif report is not None:
        log(f"WARNING: no saliency maps for trial {trial_id}: {report}")


def log_patients_table(tracker: Tracker, run_id: str, patients: PatientResults) -> None:
    """The table of test patients (subject, cells, score, share called ALL, call, truth) as an MLflow table."""
    table = patients.table()
    existing = {a.path for a in tracker.client.list_artifacts(run_id)}
    if PATIENTS_TABLE in existing:  # a test side scored again: log_table would append to the earlier rows
        columns = list(table)
        rows = [list(row) for row in zip(*(table[name] for name in columns))]
        tracker.log_json(run_id, {"columns": columns, "data": rows}, PATIENTS_TABLE)
        return
    with_retries(lambda: tracker.client.log_table(run_id, data=table, artifact_file=PATIENTS_TABLE),
                 "log table", log=tracker.log)


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


def _log_winner(tracker: Tracker, parent_run_id: str, winner, scores: dict[str, float],
                patients: PatientResults | None, metric: str, mode: str, log: Callable[[str], None]) -> None:
    test_name = metric_on_test(metric)
    logged, undefined_tags = logged_metrics(scores, patients)
    gap = selection_gap(_best_value(winner, metric), scores.get(test_name), mode)
    if gap is not None:
        logged[SELECTION_GAP] = gap
    tracker.log_metrics(parent_run_id, logged, step=0)
    tracker.set_tags(parent_run_id, {TAG_TEST_WINNER: winner.trial_id, **undefined_tags})
    low, high = scores.get(f"{test_name}_ci95_low"), scores.get(f"{test_name}_ci95_high")
    interval = (f" (95% CI by patient {low:.4f}-{high:.4f})"
                if low is not None and high is not None and math.isfinite(low) and math.isfinite(high) else "")
    folds = (getattr(winner, "last_result", None) or {}).get("cv_folds")
    where = f"validation (mean of {folds} folds)" if folds else "validation"
    reason = undefined_metrics(scores, prefix="test_").get(test_name)
    log(f"test side: trial {winner.trial_id} {metric} {_best_value(winner, metric):.4f} on {where}, "
        f"{test_name} {format_value(scores.get(test_name), reason)}{interval} on test"
        + (f"; selection gap {gap:+.4f}" if gap is not None else ""))
    if TEMPERATURE_METRIC in scores:
        fitted_on = "out-of-fold validation" if folds else "validation"
        log(f"calibration: temperature {scores[TEMPERATURE_METRIC]:.3f} fitted on {fitted_on}; on test "
            f"ECE {scores['test_ece']:.4f} -> {scores['test_ece_calibrated']:.4f}, Brier "
            f"{scores['test_brier']:.4f} -> {scores['test_brier_calibrated']:.4f}")


def log_winner_records(records: dict[str, Any], log: Callable[[str], None]) -> None:
    """The winner's patient line and saliency line."""
    patients = records.get(PATIENTS)
    if patients is not None:
        log(patients_line(patients))
    report = records.get(SALIENCY)
    if isinstance(report, SaliencyReport):
        log(saliency_line(report))


def patients_line(patients: PatientResults) -> str:
    """`patients at 0.5: 3 of 3 ALL and 1 of 2 normal called right; sensitivity 1.0000 (exact 95% CI ...)...`."""
    m = {key.removeprefix("test_"): value for key, value in patients.metrics.items()}
    rates = []
    for name, cls in (("sensitivity", "all"), ("specificity", "hem")):
        value, reason = m[f"patient_{name}"], patients.undefined.get(f"test_patient_{name}")
        interval = (f" (exact 95% CI {m[f'patient_{name}_ci95_low']:.4f}-{m[f'patient_{name}_ci95_high']:.4f})"
                    if math.isfinite(value) else "")
        rates.append(f"{name} {format_value(value, reason)}{interval}")
    return (f"patients on test (mean calibrated P(ALL) >= {patients.threshold:g}): "
            f"{m['patient_cm_true_all_pred_all']} of {m['patients_all']} ALL and {m['patient_cm_true_hem_pred_hem']} "
            f"of {m['patients_hem']} normal called right; " + ", ".join(rates))


def saliency_line(report: SaliencyReport) -> str:
    """`saliency: Grad-CAM randomisation check passed (median rank correlation -0.43 < 0.5, 6 cells)`."""
    verdict = "passed" if report.passed else "FAILED (no maps shown)"
    kept = int((~np.isnan(report.correlations)).sum())
    return (f"saliency: Grad-CAM randomisation check {verdict}: median rank correlation "
            f"{format_value(report.median_correlation, 'every map blank', digits=2)} "
            f"(passes below {report.bound:g}; {kept} of {len(report.cells)} test cells with a map)")


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
