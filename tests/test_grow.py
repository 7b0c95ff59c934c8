"""Studies that grow: `--resume --set tune.num_samples=N` extends a finished study (same parent run, the searcher's
state restored), `--resume` refuses any other change in one line, `tune.warm_start` hands earlier trials that fit
the space to the searcher, and `leukotune diff` says what differs between two studies.

The fast tests drive the pieces with real Optuna searchers and configs; the one slow test warm-starts a study from
the session's shared study, extends it, kills the extension and resumes it.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import optuna
import pytest

from leukotune.tuner.cli.main import main
from leukotune.tuner.compat import optuna_study_of
from leukotune.tuner.config import load_study
from leukotune.tuner.tracking.study_records import StudyRecord
from leukotune.tuner.tune.differences import describe_differences, resumed_config
from leukotune.tuner.tune.plan import STUDY_FILE, StudyPlan, latest_study_dir
from leukotune.tuner.tune.search import make_searcher
from leukotune.tuner.tune.space import DEFAULT_SPACE, DefineByRun, distribution_of, resolve_space, sample_points
from leukotune.tuner.tune.warm_start import EarlierTrial, WarmStart, fit_trial, give_to_searcher

from conftest import SHARED_EXPERIMENT, SMOKE, TINY, sets, study_runs
from conftest import run_leukotune as run_cli
from studyproc import StudyProcess


# ------------------------------------------------------------------ what --resume may change

def test_resume_takes_a_larger_budget_and_new_concurrency_and_keeps_a_budget_that_would_shrink():
    saved = load_study(SMOKE, ["tune.num_samples=2"])
    grown, taken = resumed_config("s-1", saved, load_study(SMOKE, ["tune.num_samples=5", "tune.max_concurrent=1"]))
    assert (grown.tune.num_samples, grown.tune.max_concurrent) == (5, 1)
    assert [change.describe() for change in taken] == ["tune.max_concurrent 2 -> 1", "tune.num_samples 2 -> 5"]
    kept, taken = resumed_config("s-1", grown, load_study(SMOKE, ["tune.num_samples=3", "tune.max_concurrent=1"]))
    assert kept.tune.num_samples == 5 and taken == []


def test_resume_refuses_any_other_change_in_one_line_naming_each():
    saved = load_study(SMOKE, ["tune.num_samples=2"])
    requested = load_study(SMOKE, ["tune.num_samples=4", "train.epochs=2", "tune.space.lr={loguniform: [0.001, 0.1]}"])
    with pytest.raises(ValueError) as refused:
        resumed_config("smoke-1", saved, requested)
    message = str(refused.value)
    assert "\n" not in message
    assert "train.epochs 4 -> 2; tune.space.lr.loguniform [0.0001, 0.01] -> [0.001, 0.1]" in message
    assert "tune.num_samples" not in message.split("only")[0]  # the budget is not among the refused changes
    assert "tune.warm_start=smoke-1" in message


def test_the_command_refuses_a_changed_resume_before_ray_starts(tmp_path, env):
    folder = tmp_path / ".leukotune" / "runs" / "smoke-20260101-000000-abcd"
    folder.mkdir(parents=True)
    (folder / STUDY_FILE).write_text(json.dumps({"study_id": folder.name, "parent_run_id": "x",
                                                 "config": load_study(SMOKE, []).to_dict()}))
    result = run_cli(["tune", "--config", str(SMOKE), *sets(["train.dropout=0.3"]), "--resume"], tmp_path, env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().count("\n") == 0 and "train.dropout 0.2 -> 0.3" in result.stderr
    assert "Ray:" not in result.stdout


def test_resume_finds_its_own_study_not_one_whose_name_it_begins(tmp_path):
    for folder, age in (("smoke-20260101-000000-abcd", 0), ("smoke-wide-20260101-000001-abcd", 10)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / STUDY_FILE).write_text("{}")
        os.utime(tmp_path / folder, (1_800_000_000 + age, 1_800_000_000 + age))
    assert latest_study_dir(tmp_path, "smoke").name == "smoke-20260101-000000-abcd"
    assert latest_study_dir(tmp_path, "smoke-wide").name == "smoke-wide-20260101-000001-abcd"


# ------------------------------------------------------------------ warm start: fitting earlier trials

def test_recorded_distributions_are_the_ones_the_define_by_run_space_samples():
    fixed = load_study(None).train.to_dict()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(40):
        trial = study.ask()
        DefineByRun(DEFAULT_SPACE, fixed)(trial)
        params = dict(fixed)
        for name, spec in DEFAULT_SPACE.items():
            if name in trial.params:
                assert distribution_of(name, spec, params) == trial.distributions[name], name
                params[name] = trial.params[name]
        study.tell(trial, 0.0)


def record_of(config: dict, fingerprint: str = "f" * 16, study_id: str = "old-1") -> StudyRecord:
    return StudyRecord(study_id=study_id, run_id="r", experiment="old", status="FINISHED", config=config, space={},
                       fingerprint=fingerprint, code_version="0.1.0+x")


SMOKE_SPACE_TRIAL = {"conv_layers": "3", "kernel_size": "5", "optimizer": "adam", "lr": "0.002"}


@pytest.mark.parametrize("params, value, overrides, expected", [
    (SMOKE_SPACE_TRIAL, 0.7, [], {"conv_layers": 3, "kernel_size": 5, "optimizer": "adam", "lr": 0.002}),
    (SMOKE_SPACE_TRIAL, 0.7, ["tune.space.lr={loguniform: [0.003, 0.01]}"], "outside the space: lr=0.002"),
    ({**SMOKE_SPACE_TRIAL, "optimizer": "sgd"}, 0.7, [], "outside the space: optimizer=sgd is not in [rmsprop, adam]"),
    (SMOKE_SPACE_TRIAL, 0.7, ["train.epochs=9"], "other fixed setting: train.epochs was 4, this study fixes 9"),
    (SMOKE_SPACE_TRIAL, float("nan"), [], "no score"),
    (SMOKE_SPACE_TRIAL, 0.7, ["train.pipeline=loader"], {"conv_layers": 3, "kernel_size": 5, "optimizer": "adam",
                                                         "lr": 0.002}),  # how it trains, not what it learns
    # A wider space: the earlier study's fixed dropout (0.2) stands in for the value it did not sample.
    (SMOKE_SPACE_TRIAL, 0.7, ["tune.space.dropout={uniform: [0.1, 0.5]}"],
     {"conv_layers": 3, "kernel_size": 5, "optimizer": "adam", "lr": 0.002, "dropout": 0.2}),
    # The depth limit depends on the image: 6 conv layers do not fit the smoke study's 64 px image.
    ({**SMOKE_SPACE_TRIAL, "conv_layers": "6"}, 0.7, ["tune.space.conv_layers={int: [2, 6]}"],
     "outside the space: conv_layers=6 is not in [2, 5]"),
])
def test_an_earlier_trial_fits_the_new_space_or_says_why_not(params, value, overrides, expected):
    earlier = load_study(SMOKE)
    study = load_study(SMOKE, overrides)
    fitted = fit_trial(params, value, record_of(earlier.to_dict()), study, resolve_space(study))
    if isinstance(expected, dict):
        assert fitted == (expected, value)
    else:
        assert isinstance(fitted, str) and fitted.startswith(expected), fitted


def test_warm_trials_join_the_searcher_and_tpe_models_from_its_first_proposal():
    study = load_study(SMOKE, ["tune.num_samples=12"])
    space = resolve_space(study)
    plan = StudyPlan(study=study, study_id="warm", directory=Path("unused"), space=space, resume=False)
    cold = make_searcher(plan, concurrency=1)
    points = sample_points(space, study.train.to_dict(), 6, seed=7)
    warm = WarmStart(source="old", studies=["old-1"],
                     given=[EarlierTrial("old-1", f"t{i}", f"run{i}", point, 1.0 - abs(point["lr"] - 0.003))
                            for i, point in enumerate(points)])
    plan.warm_start = warm
    searcher = make_searcher(plan, concurrency=1)
    trials = optuna_study_of(searcher).trials
    assert [t.params for t in trials] == points
    assert {t.user_attrs["leukotune.warm_start_run"] for t in trials} == {f"run{i}" for i in range(6)}
    # Six finished trials reach TPE's startup of 3: the first proposal is modelled, not random search's first draw.
    assert searcher.suggest("new-0") != cold.suggest("new-0")
    assert give_to_searcher(cold, space, study.train.to_dict(), WarmStart("x", ["x"])) == 0


def test_diff_lists_config_space_data_and_code_differences():
    a = record_of(load_study(SMOKE).to_dict(), study_id="a-1")
    b_config = load_study(SMOKE, ["train.epochs=6", "tune.warm_start=a-1"]).to_dict()
    b = StudyRecord(study_id="b-1", run_id="r2", experiment="new", status="RUNNING", config=b_config,
                    space={"lr": {"loguniform": [0.001, 0.1]}}, fingerprint="e" * 16, code_version="0.1.0+x")
    lines = describe_differences(a, b)
    assert lines[:2] == ["A: a-1 (experiment old, FINISHED)", "B: b-1 (experiment new, RUNNING)"]
    assert "config: 2 difference(s), A -> B" in lines and "  train.epochs 4 -> 6" in lines
    assert '  tune.warm_start null -> "a-1"' in lines
    assert "search space: 1 difference(s), A -> B" in lines
    assert "  lr.loguniform (absent) -> [0.001, 0.1]" in lines
    assert f"data fingerprint: differs, {'f' * 16} -> {'e' * 16}" in lines and "code version: same (0.1.0+x)" in lines


# ------------------------------------------------------------------ the whole road, on real Ray and MLflow

WARM_EXPERIMENT = "grow-warm"


@pytest.mark.slow
def test_a_warm_started_study_is_extended_killed_and_resumed_into_one_study(shared_study, tmp_path, env, capsys):
    client, shared_parents, shared_trials = study_runs(shared_study.uri, SHARED_EXPERIMENT)
    lrs = sorted(float(run.data.params["lr"]) for run in shared_trials)
    # A space that leaves out the shared study's smallest lr: one earlier trial is skipped for it.
    space = f"tune.space.lr={{loguniform: [{lrs[0] * 1.0001}, 0.01]}}"
    args = ["tune", "--config", str(SMOKE), *sets(TINY + [
        "train.epochs=2", "tune.scheduler=fifo", "tune.max_concurrent=2", "tracking.log_models=0",
        "tune.test_top_k=1", f"tracking.experiment={WARM_EXPERIMENT}", f"tracking.tracking_uri={shared_study.uri}",
        f"tune.warm_start={SHARED_EXPERIMENT}", space])]

    first = run_cli(args + sets(["tune.num_samples=2"]), tmp_path, env)
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-4000:]
    assert f"warm start from {SHARED_EXPERIMENT}" in output and "2 earlier trial(s) given to the searcher, 1 skipped " \
        "(1 outside the space)" in output
    _, parents, children = study_runs(shared_study.uri, WARM_EXPERIMENT)
    parent = parents[0]
    tags = parent.data.tags
    assert (tags["leukotune.warm_start.source"], tags["leukotune.warm_start.given"],
            tags["leukotune.warm_start.skipped"], tags["leukotune.warm_start.data_changed"]) == (
        SHARED_EXPERIMENT, "2", "1", "false")
    assert tags["leukotune.warm_start.studies"] == shared_parents[0].data.tags["leukotune.study_id"]
    study_dir = next((tmp_path / ".leukotune" / "runs").glob("smoke-*"))
    assert warm_and_own(study_dir) == (2, 2)

    # Extend to 4 trials, kill the extension once a new trial has started, then resume it with the same command.
    extend = args + sets(["tune.num_samples=4"]) + ["--resume"]
    driver = StudyProcess(extend, tmp_path, env)
    assert driver.wait_for(r"extending study .* from 2 to 4 trials"), driver.finish()[-3000:]
    assert driver.wait_for(r"trial \w+ started"), driver.finish()[-3000:]
    os.killpg(driver.pid, signal.SIGKILL)
    driver.finish(timeout=60)
    resumed = run_cli(extend, tmp_path, env)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-4000:]
    assert "resuming study" in output and "Traceback" not in output

    _, parents, children = study_runs(shared_study.uri, WARM_EXPERIMENT)
    assert [p.info.run_id for p in parents] == [parent.info.run_id]  # the same parent run
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["leukotune.extended"] == "2 -> 4"
    trial_ids = [child.data.tags["leukotune.trial_id"] for child in children]
    assert len(trial_ids) == 4 == len(set(trial_ids))  # no duplicate, no lost run
    assert all(child.info.status == "FINISHED" for child in children)
    # The test side was brought up to date: one trial ranked on it (tune.test_top_k=1), whichever is top now.
    assert sum("leukotune.test_rank" in child.data.tags for child in children) == 1
    assert warm_and_own(study_dir) == (2, 4)  # the searcher kept its warm trials and knows all four of its own
    result = json.loads((study_dir / "leukotune_result.json").read_text())
    assert result["complete"] and len(result["leaderboard"]) == 4
    assert any("test" in row for row in result["leaderboard"])

    # What differs from the study it started from.
    capsys.readouterr()
    assert main(["diff", shared_parents[0].data.tags["leukotune.study_id"], WARM_EXPERIMENT,
                 "--tracking-uri", shared_study.uri]) == 0
    printed = capsys.readouterr().out
    assert f'  tune.warm_start null -> "{SHARED_EXPERIMENT}"' in printed
    assert "search space: 1 difference(s)" in printed and "data fingerprint: same" in printed


def warm_and_own(study_dir: Path) -> tuple[int, int]:
    """(warm-started, own) finished trials in the Optuna study Tune last saved with the searcher."""
    from leukotune.tuner.tracking.parent_run import load_optuna_study

    trials = load_optuna_study(study_dir).get_trials(states=[optuna.trial.TrialState.COMPLETE])
    warm = sum("leukotune.warm_start_run" in t.user_attrs for t in trials)
    return warm, len(trials) - warm
