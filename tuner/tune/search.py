"""The searcher (Optuna TPE, or random for baselines) and the scheduler (ASHA or FIFO) of a study."""
from __future__ import annotations

import warnings

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from leukotune.tuner.config import OptunaConfig, SearchConfig, StudyConfig
from leukotune.tuner.tune.space import DefineByRun
from leukotune.tuner.tune.plan import StudyPlan
from leukotune.tuner.tune.warm_start import give_to_searcher


def startup_trials(optuna_cfg: OptunaConfig, num_samples: int) -> int:
    """Random trials TPE waits for before it models results: as set, or sized to the budget when "auto"."""
    if optuna_cfg.n_startup_trials == "auto":
        return max(3, min(10, num_samples // 4))
    return optuna_cfg.n_startup_trials


def make_sampler(tune_cfg: SearchConfig, concurrency: int) -> optuna.samplers.BaseSampler:
    """TPE set up for this study's budget and concurrency, or seeded random search for baselines.

    TPE's startup draws come from its own RandomSampler with the same seed, so they are exactly random search's
    first draws: a paired comparison, where the two part only once TPE starts modelling (kept on purpose).
    """
    if tune_cfg.search == "random":
        return optuna.samplers.RandomSampler(seed=tune_cfg.seed)
    opts = tune_cfg.optuna
    liar = concurrency > 1 if opts.constant_liar == "auto" else opts.constant_liar
    with warnings.catch_warnings():
        # `group` is flagged experimental since Optuna 2.8; the warning would repeat in every study's log.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=tune_cfg.seed, n_startup_trials=startup_trials(opts, tune_cfg.num_samples),
            multivariate=opts.multivariate, group=opts.group, constant_liar=liar)


def make_searcher(plan: StudyPlan, concurrency: int):
    """Seeded TPE (or random, for baselines) over the define-by-run space; `concurrency`: trials run at once.

    The Optuna study lives in the searcher, which Tune checkpoints with the experiment state: one source of truth
    that a resumed study restores together with its trials (a separate Optuna database would run ahead of it).
    """
    tune_cfg = plan.study.tune
    fixed = dict(plan.study.train.to_dict())
    searcher = OptunaSearch(space=DefineByRun(plan.space, fixed), metric=tune_cfg.metric,
                            mode=tune_cfg.mode, sampler=make_sampler(tune_cfg, concurrency),
                            points_to_evaluate=list(tune_cfg.points_to_evaluate) or None)
    if plan.warm_start is not None:
        # Earlier trials join the Optuna study as finished ones (Ray's `evaluated_rewards` refuses a define-by-run
        # space), saved with the searcher from Tune's first checkpoint on.
        give_to_searcher(searcher, plan.space, fixed, plan.warm_start)
    return searcher


def make_scheduler(study: StudyConfig):
    tune_cfg = study.tune
    if tune_cfg.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", metric=tune_cfg.metric, mode=tune_cfg.mode,
                         max_t=study.train.epochs, grace_period=min(tune_cfg.grace_period, study.train.epochs),
                         reduction_factor=tune_cfg.reduction_factor)
