"""The search space, as data, in one place; and its translation into an Optuna define-by-run function.

A space maps a `train.*` key to one distribution:
    {choice: [..]} | {uniform: [lo, hi]} | {loguniform: [lo, hi]} | {int: [lo, hi]}
optionally with `when: {other_key: value or [values]}` for conditional parameters (transfer models have no
`conv_layers`). Keys are sampled in the order written, so a condition may only name a key above it.
"""
from __future__ import annotations

from typing import Any, Callable

import optuna

from leukotune.models.cnn import max_conv_layers
from leukotune.tuner.config import ConfigError, StudyConfig, replace_train, train_keys

# The knobs the paper explored by hand, wider where it fixed one value. Study files may narrow or replace it.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "model": {"choice": ["cnn", "resnet50", "mobilenet_v2"]},
    "image_size": {"choice": [64, 128, 224, 256]},
    "color": {"choice": ["rgb", "gray"]},
    "conv_layers": {"int": [2, 6], "when": {"model": "cnn"}},
    "kernel_size": {"choice": [3, 5, 7], "when": {"model": "cnn"}},
    "optimizer": {"choice": ["rmsprop", "adam", "sgd"]},
    "lr": {"loguniform": [1e-5, 1e-2]},
    "batch_size": {"choice": [16, 32, 64]},
    "dropout": {"uniform": [0.0, 0.5]},
    "augment": {"choice": ["none", "rot90", "rot90_flip"]},
}


DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int")


class SpaceError(ValueError):
    """A search space that is malformed or cannot be sampled."""


def _kind(name: str, spec: dict[str, Any]) -> str:
    if not isinstance(spec, dict):
        raise SpaceError(f"tune.space.{name}: expected a mapping like {{choice: [...]}}, got {spec!r}")
    kinds = [k for k in spec if k != "when"]
    unknown = [k for k in kinds if k not in DISTRIBUTIONS]
    if len(kinds) != 1 or unknown:
        raise SpaceError(f"tune.space.{name}: needs exactly one of {', '.join(DISTRIBUTIONS)} (plus optional "
                         f"'when'), got keys {sorted(spec)}")
    return kinds[0]


def check_space(space: dict[str, dict[str, Any]], train_keys: set[str]) -> None:
    """Refuse unknown keys, malformed bounds and conditions that name a later or missing key."""
    seen: list[str] = []
    for name, spec in space.items():
        if name not in train_keys:
            raise SpaceError(f"tune.space.{name}: not a train setting; valid keys: {', '.join(sorted(train_keys))}")
        kind, args = _kind(name, spec), spec[_kind(name, spec)]
        if kind == "choice" and (not isinstance(args, list) or not args):
            raise SpaceError(f"tune.space.{name}: choice needs a non-empty list, got {args!r}")
        if kind != "choice":
            if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) for a in args)):
                raise SpaceError(f"tune.space.{name}: {kind} needs [low, high], got {args!r}")
            low, high = args
            if not low < high or (kind == "loguniform" and low <= 0):
                raise SpaceError(f"tune.space.{name}: {kind} bounds {args!r} are empty or invalid")
        for other in (spec.get("when") or {}):
            if other not in seen:
                raise SpaceError(f"tune.space.{name}: condition names '{other}', which must be sampled above it")
        seen.append(name)


def applies(spec: dict[str, Any], params: dict[str, Any]) -> bool:
    for key, wanted in (spec.get("when") or {}).items():
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if params.get(key) not in allowed:
            return False
    return True


# Upper bounds that depend on parameters sampled earlier: 6 conv layers fit 256 px but pool 64 px away. The rule
# itself is the model's (models/cnn.py), which refuses deeper networks.
DEPENDENT_LIMITS: dict[str, Callable[[dict[str, Any]], int]] = {
    "conv_layers": lambda params: max_conv_layers(int(params["image_size"])),
}


def _int_high(name: str, args: list, params: dict[str, Any]) -> int:
    high = int(args[1])
    if name in DEPENDENT_LIMITS:
        high = max(int(args[0]), min(high, DEPENDENT_LIMITS[name](params)))
    return high


def _suggest(trial, name: str, spec: dict[str, Any], params: dict[str, Any]) -> Any:
    kind = _kind(name, spec)
    args = spec[kind]
    if kind == "choice":
        return trial.suggest_categorical(name, args)
    if kind == "int":
        return trial.suggest_int(name, int(args[0]), _int_high(name, args, params))
    return trial.suggest_float(name, float(args[0]), float(args[1]), log=kind == "loguniform")


def distribution_of(name: str, spec: dict[str, Any], params: dict[str, Any]) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution `_suggest` samples `name` from, given the parameters sampled above it: what an earlier
    trial handed to the searcher must be recorded under (tests/test_grow.py checks the two agree)."""
    kind = _kind(name, spec)
    args = spec[kind]
    if kind == "choice":
        return optuna.distributions.CategoricalDistribution(args)
    if kind == "int":
        return optuna.distributions.IntDistribution(int(args[0]), _int_high(name, args, params))
    return optuna.distributions.FloatDistribution(float(args[0]), float(args[1]), log=kind == "loguniform")


class DefineByRun:
    """An Optuna define-by-run sampler over `space`; it only samples (OptunaSearch forbids computation here).

    `fixed` holds the study's train settings, so conditions and limits see values the space does not sample.
    A class rather than a closure: Tune pickles the searcher, and with it this object, at every checkpoint.
    """

    def __init__(self, space: dict[str, dict[str, Any]], fixed: dict[str, Any]):
        self.space, self.fixed = space, fixed

    def __call__(self, trial) -> None:
        params: dict[str, Any] = dict(self.fixed)
        for name, spec in self.space.items():
            if applies(spec, params):
                params[name] = _suggest(trial, name, spec, params)


def sample_points(space: dict[str, dict[str, Any]], fixed: dict[str, Any], count: int, seed: int = 0
                  ) -> list[dict[str, Any]]:
    """Draw `count` random points offline, to prove before any trial that every draw makes a valid config."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    sampler = DefineByRun(space, fixed)
    points = []
    for _ in range(count):
        trial = study.ask()
        sampler(trial)
        points.append(dict(trial.params))
        study.tell(trial, 0.0)
    return points


def resolve_space(study: StudyConfig, draws: int = 64) -> dict[str, Any]:
    """The study's space (`tune.space`, else DEFAULT_SPACE), checked: its shape first, then points drawn offline
    and each built into a config, so a space that can produce an unusable trial is refused before Ray starts."""
    space = study.tune.space or DEFAULT_SPACE
    try:
        check_space(space, train_keys())
        points = (sample_points(space, study.train.to_dict(), draws, seed=study.tune.seed)
                  + list(study.tune.points_to_evaluate))
    except SpaceError as exc:
        raise ConfigError(str(exc)) from exc
    for point in points:
        try:
            replace_train(study, point)
        except ConfigError as exc:
            raise ConfigError(f"tune.space can produce an unusable trial {point}: {exc}") from exc
    return space
