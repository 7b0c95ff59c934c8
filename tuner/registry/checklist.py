"""The model card's reporting checklist: the TRIPOD+AI (2024) and CLAIM (2024) items a study's records answer, each
read from the MLflow record named beside it, and the items only a person can write.

`read_records` gathers what the card reads once (the trial run, its study's parent run, their JSON artifacts);
each `*_lines` function turns part of it into Markdown. Nothing here runs a model: every number is a record's own,
or, for the patient-level results and the failures at the version's threshold, derived from the trial's per-cell
P(ALL) (`calibration/cell_scores.json`) by the functions the test side and `evaluate` use.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from leukotune.tuner.evaluation.calibration import CELL_SCORES_FILE, StoredDecision, calibrate
from leukotune.tuner.evaluation.patients import PatientResults, judge_patients
from leukotune.tuner.evaluation.software import PACKAGES, TAG_SOFTWARE, software_versions
from leukotune.tuner.metrics import format_value
from leukotune.tuner.registry.model_uris import TAG_TRAINED_MODEL
from leukotune.tuner.tracking.client import PARENT_TAG, TAG_FINGERPRINT

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

# Where the records are. The saliency ones are named as tuner/tracking/saliency_figures.py writes them and the
# patients table as tuner/tune/holdout.py does, here rather than imported so that promote loads neither matplotlib
# nor Ray to read them (tests/test_checklist.py checks that the names agree).
PARENT_FILES = {"summary": "data/summary.json", "sides": "data/split.json", "config": "config/resolved.json",
                "space": "config/search_space.json"}
RUN_FILES = {"best_epoch": "best_epoch.json", "cells": CELL_SCORES_FILE, "saliency": "saliency/summary.json"}
SALIENCY_FIGURES = ("saliency/gradcam_cells.png", "saliency/randomisation_check.png")
PATIENTS_TABLE = "patients.json"
TAG_CODE_VERSION = "leukotune.code_version"
WORST = 5  # cells listed in the failure analysis
# The training settings the card names as fixed when the search does not vary them.
FIXED_SHOWN = ("model", "weights", "image_size", "color", "batch_size", "optimizer", "augment", "class_weights")


@dataclass(frozen=True)
class Records:
    """What the card reads: the trial run, its study's parent run, and their JSON artifacts ({} when absent)."""

    run: Run
    parent: Run | None
    files: dict[str, Any]
    artifacts: frozenset[str]

    @property
    def params(self) -> dict[str, str]:
        return dict(self.parent.data.params) if self.parent else {}

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.run.data.metrics)

    def file(self, name: str) -> Any:
        return self.files.get(name) or {}


def read_records(client: MlflowClient, run: Run) -> Records:
    """The trial run's records and its parent's, each JSON artifact downloaded once."""
    parent_id = run.data.tags.get(PARENT_TAG)
    parent = client.get_run(parent_id) if parent_id else None
    files: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="leukotune-card-") as tmp:
        for name, path in RUN_FILES.items():
            files[name] = _download_json(client, run.info.run_id, path, tmp)
        for name, path in PARENT_FILES.items():
            files[name] = _download_json(client, parent.info.run_id, path, tmp) if parent else None
    listed = {a.path for folder in (None, "saliency") for a in client.list_artifacts(run.info.run_id, folder)}
    return Records(run, parent, files, frozenset(listed))


def _download_json(client: MlflowClient, run_id: str, path: str, folder: str) -> Any:
    try:
        return json.loads(Path(client.download_artifacts(run_id, path, folder)).read_text())
    except Exception:  # noqa: BLE001 - an absent record makes the card say "not recorded", not fail a promotion
        return None


def number(value: Any, digits: int = 4) -> str:
    """A finite number to `digits` decimals, else `-`."""
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _artifact(records: Records, path: str) -> str:
    return f"`runs:/{records.run.info.run_id}/{path}`"


# ---------------------------------------------------------------- data, partitions, participant flow

def data_lines(records: Records) -> list[str]:
    """Data source and fingerprint, how the partitions were made and at what level they are disjoint, and the
    participant flow (subjects and cells per class on each side)."""
    summary, params = records.file("summary"), records.params
    parent_tags = records.parent.data.tags if records.parent else {}
    fingerprint = (records.run.data.tags.get(TAG_FINGERPRINT) or parent_tags.get(TAG_FINGERPRINT)
                   or summary.get("fingerprint"))
    return ["## Data", "",
            f"- Source: {_source(summary, records.file('config'))}.",
            f"- fingerprint `{fingerprint or 'unknown'}` (sha256 of every usable file's relative path, label, "
            f"subject, fold and size); {summary.get('cells', '?')} usable cells of {summary.get('subjects', '?')} "
            f"subjects; {len(summary.get('skipped', []))} unreadable files left out (listed in the study run's "
            f"`data/summary.json`).",
            *_partition_lines(records), "", "### Participant flow (study run: `data/split.json`, params "
            "`data.<side>_<class>_cells`)", "", *_flow_lines(records)]


def _source(summary: dict[str, Any], config: dict[str, Any]) -> str:
    if not summary:
        return "not recorded (the study run has no data/summary.json)"
    if summary.get("synthetic"):
        synthetic = config.get("data", {}).get("synthetic", {})
        return (f"the synthetic stand-in leukotune writes in the C-NMC layout ({synthetic.get('subjects', '?')} "
                f"subjects x {synthetic.get('cells_per_subject', '?')} cells, seed {synthetic.get('seed', '?')}): "
                f"not real cells, for testing the pipeline only")
    return (f"the folder `{summary.get('root')}` in the C-NMC 2019 layout (training folds and, if present, the "
            f"preliminary test folder)")


_SPLITS = {"subject": "validation subjects drawn per class (data.val_fraction {val}, seed {seed}): whole patients",
           "image": "validation cells drawn by image (data.val_fraction {val}, seed {seed}): one patient's cells "
                    "may sit in train and validation",
           "fold": "C-NMC's own folds (validation fold {fold})"}


def _partition_lines(records: Records) -> list[str]:
    data = records.file("config").get("data", {})
    split = records.params.get("data.split_method", data.get("split", "?"))
    made = _SPLITS.get(split, "{split}").format(val=data.get("val_fraction", "?"), seed=data.get("seed", "?"),
                                                fold=data.get("val_fold"), split=split)
    test = ("the C-NMC preliminary test folder" if records.params.get("data.test_source") == "prelim" else
            f"data.test_fraction {data.get('test_fraction', '?')} of each class's subjects, at least one each, "
            f"set aside (seed {data.get('seed', '?')}) before anything else")
    folds = int(data.get("cv_folds") or 0)
    cv = ("- Cross-validation: none (data.cv_folds 0): one validation side." if not folds else
          f"- Cross-validation: {folds} folds of whole patients over the non-test subjects (data.cv_folds "
          f"{folds}); each trial trains one model per fold and is scored on their mean.")
    return [f"- Partitions (validation split `{split}`, test side from `{records.params.get('data.test_source', '?')}`"
            f", always subject-disjoint): {made}; test side: {test}.", f"- Disjoint at the patient level: "
            f"{_disjointness(records.file('sides'), split)}.", cv]


def _disjointness(sides: dict[str, list[str]], split: str) -> str:
    if not sides:
        return "not recorded (no data/split.json)"
    train, val, test = (set(sides.get(k, [])) for k in ("train", "val", "test"))
    shared_test = sorted((train | val) & test)
    if shared_test:
        return f"NO: test subjects {', '.join(shared_test)} also sit on train or validation"
    if train & val:
        return (f"test shares no subject with train or validation (checked on data/split.json); train and "
                f"validation share {len(train & val)} subjects (split `{split}`)")
    return "yes, no subject has cells on two sides (checked on data/split.json when this card was written)"


def is_normal_subject(subject: str) -> bool:
    """C-NMC names normal donors H<n> and ALL patients <n> (data/cnmc.py refuses a file whose name and label
    disagree), so a subject ID says its class."""
    return subject.upper().startswith("H")


def _flow_lines(records: Records) -> list[str]:
    params, sides = records.params, records.file("sides")
    lines = []
    for side in ("train", "val", "test"):
        cells = ", ".join(f"{params.get(f'data.{side}_{name}_cells', '?')} {name.upper() if name == 'all' else name}"
                          for name in ("all", "hem"))
        subjects = sides.get(side)
        listed = f"{len(subjects)} subjects" if subjects is not None else "subjects unknown"
        if subjects and side == "test":
            listed += f" ({', '.join(subjects[:40])}{', ...' if len(subjects) > 40 else ''})"
        if subjects:
            normal = sum(is_normal_subject(s) for s in subjects)
            listed += f", of which {len(subjects) - normal} ALL and {normal} normal"
        lines.append(f"- {side}: {cells} cells; {listed}")
    for index, fold in enumerate(records.file("summary").get("folds", [])):
        lines.append(f"- cross-validation fold {index} validates {fold['all']} ALL, {fold['hem']} hem cells of "
                     f"{fold['subjects']} subjects (train/val above are fold 0's)")
    return lines


# ---------------------------------------------------------------- tuning and selection

def tuning_lines(records: Records, ranked_by: str) -> list[str]:
    """Search space, budget, searcher, scheduler and selection rule, from the study's resolved config."""
    config = records.file("config")
    if not config:
        return ["## Tuning and selection", "", "- Not recorded (the study run has no config/resolved.json)."]
    tune, train = config.get("tune", {}), config.get("train", {})
    trials = records.parent.data.metrics.get("trials") if records.parent else None
    space = records.file("space") or tune.get("space", {})
    return ["## Tuning and selection (study run: `config/resolved.json`, `config/search_space.json`)", "",
            "- Search space: " + ("; ".join(f"`{k}` {_distribution(v)}" for k, v in space.items()) or "none") +
            ". Fixed: " + (", ".join(f"`{k}` {train[k]}" for k in FIXED_SHOWN
                                     if train.get(k) is not None and k not in space) or "-") + ".",
            f"- Budget: tune.num_samples {tune.get('num_samples', '?')} trials ({number(trials, 0)} ran), at most "
            f"train.epochs {train.get('epochs', '?')} epochs each, {tune.get('max_concurrent') or 'as many as fit'}"
            f" at a time.",
            f"- Searcher: {_searcher(tune)}. Scheduler: {_scheduler(tune, train)}.",
            f"- Selection: each trial's best epoch by `{tune.get('metric', '?')}` ({tune.get('mode', '?')}) on "
            f"validation; the top tune.test_top_k {tune.get('test_top_k', '?')} trials by it were scored once on "
            f"test; `leukotune promote` registered the best by `{ranked_by}` and judged it on its test score.",
            _trial_line(records, space)]


def _trial_line(records: Records, space: dict[str, Any]) -> str:
    """The promoted trial's searched values, its best epoch and the study winner's selection gap."""
    chosen = ", ".join(f"`{k}` = {v}" for k, v in sorted(records.run.data.params.items()) if k in space)
    gap = records.parent.data.metrics.get("selection_gap") if records.parent else None
    return (f"- This trial: {chosen or 'no searched parameters recorded'}; best epoch "
            f"{records.file('best_epoch').get('best_epoch', '?')}"
            + (f"; selection gap of the study's winner {number(gap)} (validation minus test)" if gap is not None
               else "") + ".")


def _distribution(entry: Any) -> str:
    if isinstance(entry, dict) and len(entry) == 1:
        kind, values = next(iter(entry.items()))
        return f"{kind} {values}"
    return str(entry)


def _searcher(tune: dict[str, Any]) -> str:
    if tune.get("search") == "random":
        return f"random search (seed {tune.get('seed', '?')})"
    optuna = tune.get("optuna", {})
    return (f"Optuna TPE (n_startup_trials {optuna.get('n_startup_trials', '?')}, multivariate "
            f"{optuna.get('multivariate', '?')}, constant liar {optuna.get('constant_liar', '?')}, seed "
            f"{tune.get('seed', '?')})")


def _scheduler(tune: dict[str, Any], train: dict[str, Any]) -> str:
    if tune.get("scheduler") == "fifo":
        return "FIFO (every trial trains all its epochs)"
    return (f"ASHA (grace period {tune.get('grace_period', '?')} epochs, reduction factor "
            f"{tune.get('reduction_factor', '?')}, at most {train.get('epochs', '?')} epochs)")


# ---------------------------------------------------------------- calibration and operating point

def calibration_lines(records: Records, tags: dict[str, str]) -> list[str]:
    """The temperature and where it was fitted, test ECE and Brier score before and after, the threshold with its
    target and its validation rates, and test sensitivity and specificity there with their patient intervals
    (version tags `leukotune.*` and `operating_point.*`, run metrics `test_ece*`, `test_brier*`)."""
    decision, metrics = StoredDecision.from_tags(tags, missing="the trial has no validation scores"), records.metrics
    lines = ["## Calibration and operating point", ""]
    if decision.calibrated:
        lines.append(f"- P(ALL) is calibrated by temperature scaling: the logits are divided by "
                     f"{decision.temperature:.4f}, fitted (minimum negative log-likelihood) on {decision.calibration},"
                     f" never on test{_bound_note(records)}.")
        if "test_ece" in metrics:
            lines.append(f"- On test, expected calibration error (10 equal-width bins of P(ALL)) "
                         f"{number(metrics.get('test_ece'))} as trained, {number(metrics.get('test_ece_calibrated'))}"
                         f" calibrated; Brier score {number(metrics.get('test_brier'))} -> "
                         f"{number(metrics.get('test_brier_calibrated'))} (reliability diagram: "
                         f"{_artifact(records, 'plots/reliability.png')}).")
        if decision.calibration.startswith("out-of-fold"):
            lines.append("- The model is an ensemble of fold models, and each validation cell was scored by the fold "
                         "model that did not train on it; the ensemble is smoother than any one fold model, so its "
                         "calibration and threshold are approximate (the test numbers say how close).")
    else:
        lines.append(f"- P(ALL) is not calibrated (temperature 1.0): {decision.reason}.")
    return lines + _threshold_lines(decision, tags)


def _bound_note(records: Records) -> str:
    if records.file("cells").get("temperature_at_bound"):
        return " (the validation side is separated perfectly: the temperature stopped at its search bound)"
    return ""


def _threshold_lines(decision: StoredDecision, tags: dict[str, str]) -> list[str]:
    val = {name: float(tags.get(f"operating_point.val_{name}", "nan")) for name in ("sensitivity", "specificity")}
    lines = [f"- A cell is called ALL at calibrated P(ALL) >= {decision.threshold:.4f} ({decision.operating_point}: "
             f"sensitivity {number(val['sensitivity'])}, specificity {number(val['specificity'])} there)."]
    if decision.operating_point.startswith("sensitivity") and val["specificity"] == 0.0:
        lines.append("- The target is met only by calling every validation cell ALL (specificity 0 there).")
    elif decision.operating_point.startswith("specificity") and val["sensitivity"] == 0.0:
        lines.append("- The target is met only by calling every validation cell hem (sensitivity 0 there).")
    if "operating_point.test_sensitivity" in tags or "operating_point.test_specificity" in tags:
        lines.append("- At that threshold on test: " + "; ".join(
            f"{name} {_tag_number(tags, f'operating_point.test_{name}')} (95% CI by patient "
            f"{_tag_number(tags, f'operating_point.test_{name}_ci95_low')} - "
            f"{_tag_number(tags, f'operating_point.test_{name}_ci95_high')})"
            for name in ("sensitivity", "specificity")) + ".")
    return lines + _served_lines(decision, tags)


def _served_lines(decision: StoredDecision, tags: dict[str, str]) -> list[str]:
    """Which model the version registers, and that it decides as above when served (a version from before the
    `leukotune.trained_model` tag says nothing)."""
    trained = tags.get(TAG_TRAINED_MODEL)
    if not trained:
        return []
    if (decision.temperature, decision.threshold) == (1.0, 0.5):
        return [f"- The registered model is the trial's own `{trained}`; served (`mlflow models serve`, "
                f"`leukotune serve`), it answers as `leukotune predict` does."]
    return [f"- The registered model is a copy of the trial's `{trained}` with this temperature and threshold inside, "
            f"so served (`mlflow models serve`, `leukotune serve`), it answers as `leukotune predict` does."]


def _tag_number(tags: dict[str, str], key: str) -> str:
    return number(float(tags[key])) if key in tags else "undefined"


# ---------------------------------------------------------------- patients and failures

def test_patients(records: Records, tags: dict[str, str]) -> PatientResults | None:
    """The test patients judged at the version's threshold on calibrated P(ALL), from the trial's per-cell scores
    (what the test side logged at 0.5 as `test_patient_*` and `patients.json`); None without them."""
    test = records.file("cells").get("test")
    if not test:
        return None
    decision = StoredDecision.from_tags(tags, missing="")
    prob = calibrate(np.asarray(test["p_all"], dtype=np.float64), decision.temperature)
    return judge_patients(np.asarray(test["labels"]), prob, np.asarray(test["subjects"]), decision.threshold)


def patient_lines(records: Records, patients: PatientResults | None) -> list[str]:
    """Patient-level sensitivity and specificity with exact intervals, ROC-AUC, and the table of test patients."""
    lines = ["## Patient-level results (test side)", ""]
    if patients is None:
        return lines + ["- Not recorded: the trial run has no calibration/cell_scores.json (scored before "
                        "patient-level results existed)."]
    m = patients.metrics
    lines.append(f"- Each test subject's score is the mean calibrated P(ALL) of its cells, called ALL at >= "
                 f"{patients.threshold:.4f} (the version's threshold); recomputed from "
                 f"{_artifact(records, CELL_SCORES_FILE)}. The test side's own record at 0.5: metrics "
                 f"`test_patient_*` and the table {_artifact(records, PATIENTS_TABLE)}.")
    for name, cls in (("sensitivity", "all"), ("specificity", "hem")):
        key = f"patient_{name}"
        value = format_value(m[key], patients.undefined.get(key))
        interval = (f" (exact 95% CI {number(m[f'{key}_ci95_low'])} - {number(m[f'{key}_ci95_high'])})"
                    if math.isfinite(m[key]) else "")
        lines.append(f"- patient {name}: {value}{interval}: {m[f'patient_cm_true_{cls}_pred_{cls}']} of "
                     f"{m[f'patients_{cls}']} {'ALL' if cls == 'all' else 'normal'} subjects called right.")
    lines.append(f"- patient ROC-AUC: {format_value(m['patient_roc_auc'], patients.undefined.get('patient_roc_auc'))}"
                 f" (no interval computed).")
    lines += ["", "| subject | truth | cells | score (mean P(ALL)) | cells called ALL | call |", "| --- | --- | --- | "
              "--- | --- | --- |"]
    lines += [f"| {r.subject} | {r.truth} | {r.cells} | {r.score:.4f} | {r.called_all:.0%} | {r.call}"
              f"{'' if r.right else ' (miss)'} |" for r in patients.rows]
    return lines


def failure_lines(records: Records, patients: PatientResults | None, tags: dict[str, str]) -> list[str]:
    """The test patients and cells the model got most wrong at the version's threshold."""
    lines = ["## Failure analysis (test side)", ""]
    if patients is None:
        return lines + ["- Not recorded (no per-cell scores on the trial run)."]
    missed = [r for r in patients.rows if not r.right]
    worst = sorted(patients.rows, key=lambda r: -_wrongness(r.score, r.truth == "all", patients.threshold))
    lines.append("- Patients called wrong: " + (", ".join(f"{r.subject} ({r.truth}, score {r.score:.4f})"
                                                          for r in missed) or "none") + ".")
    if not missed and worst:
        closest = worst[0]
        lines.append(f"- Closest to a wrong call: {closest.subject} ({closest.truth}, score {closest.score:.4f}, "
                     f"threshold {patients.threshold:.4f}).")
    return lines + _cell_failure_lines(records, tags)


def _wrongness(score: float, is_all: bool, threshold: float) -> float:
    # How far the score sits on the wrong side of the threshold (negative: on the right side).
    return threshold - score if is_all else score - threshold


def _cell_failure_lines(records: Records, tags: dict[str, str]) -> list[str]:
    test, decision = records.file("cells")["test"], StoredDecision.from_tags(tags, missing="")
    prob = calibrate(np.asarray(test["p_all"], dtype=np.float64), decision.temperature)
    labels, subjects = np.asarray(test["labels"]), np.asarray(test["subjects"])
    wrong = np.flatnonzero((prob >= decision.threshold).astype(int) != labels)
    by_class = {cls: int((labels[wrong] == label).sum()) for cls, label in (("ALL", 1), ("normal", 0))}
    lines = [f"- Cells called wrong: {len(wrong)} of {len(labels)} ({by_class['ALL']} ALL cells called normal, "
             f"{by_class['normal']} normal cells called ALL)."]
    if not len(wrong):
        return lines
    shown = {int(c["index"]) for c in records.file("saliency").get("cells", [])}
    surest = wrong[np.argsort(-np.abs(prob[wrong] - labels[wrong]), kind="stable")][:WORST]
    lines += ["", "| test cell | subject | truth | calibrated P(ALL) | in the saliency figures |",
              "| --- | --- | --- | --- | --- |"]
    lines += [f"| {i} | {subjects[i]} | {'ALL' if labels[i] else 'normal'} | {prob[i]:.4f} | "
              f"{'yes' if int(i) in shown else 'no'} |" for i in surest]
    return lines + ["", "(A test cell is its position on the test side, the order of `cell_scores.json` and of the "
                        "saliency summary.)"]


# ---------------------------------------------------------------- saliency, software

def saliency_lines(records: Records) -> list[str]:
    """The model-randomisation check's verdict and median rank correlation, and where the figures are."""
    summary = records.file("saliency")
    lines = ["## Saliency (Grad-CAM, model-randomisation check)", ""]
    if not summary:
        return lines + ["- Not recorded: the trial run has no saliency/summary.json."]
    verdict = "PASSED" if summary.get("passed") else "FAILED"
    lines.append(f"- Check {verdict} (median rank correlation {number(summary.get('median_rank_correlation'), 2)}, "
                 f"passes below {summary.get('bound')}; {len(summary.get('cells', []))} test cells; layer "
                 f"{', '.join(summary.get('layers', []))}; record {_artifact(records, RUN_FILES['saliency'])}): "
                 f"{summary.get('reason', '')}.")
    lines.append(f"- The cells (up to 2 right and 2 wrong of each class) were chosen and each map explains the class "
                 f"called at P(ALL) >= {summary.get('threshold', '?')}, the test side's threshold when the study "
                 f"ran, before promote chose the version's.")
    figures = [f for f in SALIENCY_FIGURES if f in records.artifacts]
    if summary.get("passed"):
        lines.append("- Figures: " + ", ".join(_artifact(records, f) for f in figures) + ". Read them for where the "
                     "evidence sits, not why (docs/saliency.md).")
    else:
        lines.append(f"- The maps failed their sanity check: none is shown. The check's own figure is the evidence: "
                     f"{_artifact(records, SALIENCY_FIGURES[1])}.")
    return lines


def software_lines(records: Records) -> list[str]:
    """The versions that scored the test side (run tags `leukotune.software.*`, at study time), else those of the
    process writing the card, said as such."""
    tags = records.run.data.tags
    recorded = {k[len(TAG_SOFTWARE):]: v for k, v in tags.items() if k.startswith(TAG_SOFTWARE)}
    when = "recorded at study time by the test side's task (run tags `leukotune.software.*`)"
    if not recorded:
        recorded, when = software_versions(), ("NOT recorded by the study; these are the versions where this card "
                                               "was written")
    order = ["python", *PACKAGES]
    listed = ", ".join(f"{name} {recorded[name]}" for name in order if name in recorded)
    code = records.parent.data.tags.get(TAG_CODE_VERSION) if records.parent else None
    return ["## Software", "", f"- {listed}; {when}.",
            f"- leukotune code of the study: `{code or 'not recorded'}` (study run tag {TAG_CODE_VERSION})."]


# ---------------------------------------------------------------- the checklist itself

# (item, where this card answers it, or None: a person must write it)
ITEMS = (
    ("Data source and fingerprint", "Data"),
    ("Dates and sites of collection; image acquisition (microscope, stain, segmentation)", None),
    ("Eligibility of participants; reference standard and how cells were annotated, by whom", None),
    ("How partitions were made and at what level they are disjoint", "Data (partitions)"),
    ("Participant flow: subjects and cells per class on each side", "Data (participant flow)"),
    ("Model, tuning procedure, search space, budget, selection rule", "Tuning and selection"),
    ("Performance with confidence intervals, on data not used for selection", "Validation vs test"),
    ("Calibration", "Calibration and operating point"),
    ("Decision threshold and its rationale", "Calibration and operating point"),
    ("Patient-level results", "Patient-level results"),
    ("Explainability and its sanity check", "Saliency"),
    ("Failure analysis", "Failure analysis"),
    ("Software and versions", "Software"),
    ("Intended use, clinical setting and users; role in the care pathway", None),
    ("External validation (another site, stain, scanner)", None),
    ("Demographics and subgroup (fairness) analysis", None),
    ("Sample size rationale; missing data beyond unreadable files", None),
    ("Ethics approval, consent, data availability, funding, conflicts of interest", None),
)


def checklist_lines() -> list[str]:
    """The TRIPOD+AI / CLAIM items as a table: answered from the records (and where), or for a person to write."""
    lines = ["## Reporting checklist (TRIPOD+AI 2024, CLAIM 2024)", "", "| item | answered here |", "| --- | --- |"]
    lines += [f"| {item} | {where or '**to be written by a person**'} |" for item, where in ITEMS]
    missing = [item for item, where in ITEMS if where is None]
    return lines + ["", "### Still to be filled in by a person", "", *(f"- [ ] {item}" for item in missing)]
