"""The searcher (Optuna TPE, or random for baselines) and the scheduler (ASHA or FIFO) of a study."""
from __future__ import annotations

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from leukotune.tuner.config import StudyConfig
from leukotune.tuner.space import DefineByRun
from leukotune.tuner.tune.plan import StudyPlan


def make_searcher(plan: StudyPlan):
    """Seeded TPE (or random, for baselines) over the define-by-run space.

    The Optuna study lives in the searcher, which Tune checkpoints with the experiment state: one source of truth
    that a resumed study restores together with its trials (a separate Optuna database would run ahead of it).
    """
    tune_cfg = plan.study.tune
    sampler = (optuna.samplers.TPESampler(seed=tune_cfg.seed) if tune_cfg.search == "optuna"
               else optuna.samplers.RandomSampler(seed=tune_cfg.seed))
    return OptunaSearch(space=DefineByRun(plan.space, dict(plan.study.train.to_dict())), metric=tune_cfg.metric,
                        mode=tune_cfg.mode, sampler=sampler,
                        points_to_evaluate=list(tune_cfg.points_to_evaluate) or None)


def make_scheduler(study: StudyConfig):
    tune_cfg = study.tune
    if tune_cfg.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", metric=tune_cfg.metric, mode=tune_cfg.mode,
                         max_t=study.train.epochs, grace_period=min(tune_cfg.grace_period, study.train.epochs),
                         reduction_factor=tune_cfg.reduction_factor)
