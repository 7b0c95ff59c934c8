"""The searcher acts within a study's budget: TPE leaves its random startup before the last trial, proposes other
points than random search with the same seed, and keeps its state across a save and restore (Tune's resume).

These drive the very OptunaSearch that `make_searcher` gives Tune, as Tune does (suggest, then on_trial_complete,
`concurrency` trials in flight), with a cheap objective in place of training: no Ray cluster is needed.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from leukotune.tuner.config import ConfigError, load_study
from leukotune.tuner.tune.space import resolve_space
from leukotune.tuner.tune.plan import StudyPlan
from leukotune.tuner.tune.search import make_sampler, make_searcher, startup_trials

STUDIES = Path(__file__).resolve().parents[1] / "studies"
SMOKE = STUDIES / "smoke.yaml"


def score(config: dict) -> float:
    """Stands in for validation F1: best near lr 1e-3 with adam, so there is something to learn."""
    return 1.0 - abs(math.log10(config["lr"]) + 3) / 3 - 0.2 * (config["optimizer"] != "adam")


def searcher_for(overrides: list[str], concurrency: int, path: Path = SMOKE):
    study = load_study(path, overrides)
    plan = StudyPlan(study=study, study_id="test", directory=Path("unused"), space=resolve_space(study),
                     resume=False)
    return make_searcher(plan, concurrency), study


def drive(searcher, num_samples: int, concurrency: int, start: int = 0) -> list[tuple[int, dict]]:
    """Suggest and complete trials as Tune does with `concurrency` in flight, oldest finishing first.

    Returns (trials finished when it was suggested, config) for every trial, in suggestion order.
    """
    proposals, running, finished = [], [], start
    for index in range(start, start + num_samples):
        if len(running) == concurrency:
            finished += complete(searcher, running.pop(0))
        trial_id = f"t{index}"
        config = searcher.suggest(trial_id)
        running.append((trial_id, config))
        proposals.append((finished, config))
    for item in running:
        complete(searcher, item)
    return proposals


def complete(searcher, item: tuple[str, dict]) -> int:
    trial_id, config = item
    searcher.on_trial_complete(trial_id, {"val_f1_weighted": score(config), "training_iteration": 1})
    return 1


@pytest.mark.parametrize("num_samples, expected", [(1, 3), (6, 3), (12, 3), (16, 4), (40, 10), (64, 10), (500, 10)])
def test_auto_startup_is_a_quarter_of_the_budget_within_3_and_10(num_samples, expected):
    study = load_study(SMOKE, [f"tune.num_samples={num_samples}"])
    assert startup_trials(study.tune.optuna, num_samples) == expected


def test_explicit_startup_is_kept():
    study = load_study(SMOKE, ["tune.optuna.n_startup_trials=7"])
    assert startup_trials(study.tune.optuna, 100) == 7


def test_smoke_study_leaves_its_startup_phase_before_its_last_trial():
    study = load_study(SMOKE)
    concurrency = study.tune.max_concurrent
    searcher, _ = searcher_for([], concurrency)
    proposals = drive(searcher, study.tune.num_samples, concurrency)
    modelled = [finished >= startup_trials(study.tune.optuna, study.tune.num_samples) for finished, _ in proposals]
    assert modelled[-1] and not modelled[0]


@pytest.mark.parametrize("num_samples, concurrency", [(6, 2), (12, 1), (40, 4)])
def test_tpe_does_not_propose_random_searchs_sequence(num_samples, concurrency):
    tpe, study = searcher_for([f"tune.num_samples={num_samples}"], concurrency)
    rand, _ = searcher_for([f"tune.num_samples={num_samples}", "tune.search=random"], concurrency)
    tpe_proposals = drive(tpe, num_samples, concurrency)
    random_configs = [config for _, config in drive(rand, num_samples, concurrency)]
    startup = startup_trials(study.tune.optuna, num_samples)
    modelled = [finished >= startup for finished, _ in tpe_proposals]
    # Startup draws are random search's own (same seed: a paired comparison); every modelled one must differ.
    assert any(modelled)
    for is_modelled, (_, config), random_config in zip(modelled, tpe_proposals, random_configs):
        assert (config != random_config) == is_modelled


def test_tpe_learns_from_results_within_a_small_budget():
    """On a score with an obvious optimum, TPE's last trials beat random search's on the same seed."""
    num_samples, concurrency = 24, 2
    tpe, _ = searcher_for([f"tune.num_samples={num_samples}"], concurrency)
    rand, _ = searcher_for([f"tune.num_samples={num_samples}", "tune.search=random"], concurrency)
    tail = slice(num_samples // 2, None)
    tpe_tail = [score(c) for _, c in drive(tpe, num_samples, concurrency)][tail]
    random_tail = [score(c) for _, c in drive(rand, num_samples, concurrency)][tail]
    assert sum(tpe_tail) / len(tpe_tail) > sum(random_tail) / len(random_tail) + 0.05


def test_sampler_options_follow_the_study(tmp_path):
    study = load_study(SMOKE)
    sampler = make_sampler(study.tune, concurrency=2)
    assert (sampler._constant_liar, sampler._multivariate, sampler._group) == (True, True, True)
    assert make_sampler(study.tune, concurrency=1)._constant_liar is False
    forced = load_study(SMOKE, ["tune.optuna.constant_liar=false", "tune.optuna.group=false",
                                "tune.optuna.multivariate=false"])
    sampler = make_sampler(forced.tune, concurrency=4)
    assert (sampler._constant_liar, sampler._multivariate, sampler._group) == (False, False, False)


def test_restored_searcher_continues_exactly_as_the_original(tmp_path):
    """Tune pickles the searcher into its experiment state; a restored one must propose what the original would."""
    num_samples, concurrency = 16, 2
    original, _ = searcher_for([f"tune.num_samples={num_samples}"], concurrency)
    drive(original, 8, concurrency)
    original.save(str(tmp_path / "searcher.pkl"))
    restored, _ = searcher_for([f"tune.num_samples={num_samples}"], concurrency)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert drive(restored, 8, concurrency, start=8) == drive(original, 8, concurrency, start=8)


# (override, fragments of the one-line message): the key and what it accepts.
BAD_OPTUNA = [
    ("tune.optuna.n_startup_trials=0", ["tune.optuna.n_startup_trials=0", "auto", ">= 1"]),
    ("tune.optuna.n_startup_trials=many", ["tune.optuna.n_startup_trials='many'", "auto"]),
    ("tune.optuna.constant_liar=sometimes", ["tune.optuna.constant_liar='sometimes'", "auto, true or false"]),
    ("tune.optuna.multivariate=false", ["tune.optuna.group", "multivariate: true"]),
    ("tune.optuna.gamma=0.1", ["tune.optuna.gamma", "n_startup_trials, multivariate, group, constant_liar"]),
]


@pytest.mark.parametrize("override, fragments", BAD_OPTUNA)
def test_bad_optuna_settings_are_one_line_naming_the_key(override, fragments):
    with pytest.raises(ConfigError) as caught:
        load_study(SMOKE, [override])
    message = str(caught.value)
    assert "\n" not in message and "more problem" not in message
    for fragment in fragments:
        assert fragment in message
