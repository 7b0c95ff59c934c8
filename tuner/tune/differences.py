"""What differs between two studies' configurations, in one place: what `--resume` may change (the budget) and
refuses (anything else), and what `leukotune diff` lists.

A study whose space, data or training changed midway is a different study: its trials would not be comparable, and
the searcher would model scores of two problems as one. Only the budget may change on `--resume`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from leukotune.tuner.config import StudyConfig, build_study
from leukotune.tuner.tracking.client import flatten

# The keys `--resume` accepts a new value for: how many trials in all, and how many at once. (The schema has no time
# limit; it would join them.) A smaller num_samples than the study's is not taken: a budget only grows.
BUDGET_KEYS = ("tune.num_samples", "tune.max_concurrent")
_ABSENT = "(absent)"


@dataclass(frozen=True)
class Change:
    key: str
    before: Any
    after: Any

    def describe(self) -> str:
        return f"{self.key} {_show(self.before)} -> {_show(self.after)}"


def _show(value: Any) -> str:
    if value is _ABSENT:
        return _ABSENT
    return json.dumps(value, default=str) if isinstance(value, (list, dict, str)) or value is None else str(value)


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[Change]:
    """Every dotted key whose value differs between two nested dicts (lists compared whole), sorted by key."""
    flat_before, flat_after = flatten(before), flatten(after)
    keys = sorted(set(flat_before) | set(flat_after))
    return [Change(key, flat_before.get(key, _ABSENT), flat_after.get(key, _ABSENT)) for key in keys
            if flat_before.get(key, _ABSENT) != flat_after.get(key, _ABSENT)]


class ResumeRefused(ValueError):
    """`--resume` asked for a change outside the budget."""


def resumed_config(study_id: str, saved: StudyConfig, requested: StudyConfig) -> tuple[StudyConfig, list[Change]]:
    """The configuration a resumed study runs with: the saved one, with the budget keys the request raised (or
    changed, for concurrency). Returns it and the budget changes taken; refuses any other change in one line."""
    found = changes(saved.to_dict(), requested.to_dict())
    refused = [change for change in found if change.key not in BUDGET_KEYS]
    if refused:
        raise ResumeRefused(
            f"--resume: study {study_id} ran with another configuration ({'; '.join(c.describe() for c in refused)}); "
            f"only {' and '.join(BUDGET_KEYS)} may change on --resume: start a new study for the rest (with "
            f"tune.warm_start={study_id} to begin from its trials)")
    budget = {"num_samples": max(saved.tune.num_samples, requested.tune.num_samples),
              "max_concurrent": requested.tune.max_concurrent}
    config = build_study({**saved.to_dict(), "tune": {**saved.tune.to_dict(), **budget}})
    return config, changes(saved.to_dict(), config.to_dict())


def config_without_space(config: dict[str, Any]) -> dict[str, Any]:
    """A study config with its `tune.space` left out: `leukotune diff` shows the resolved space on its own."""
    tune = {key: value for key, value in (config.get("tune") or {}).items() if key != "space"}
    return {**config, "tune": tune}


def describe_differences(a, b) -> list[str]:
    """The lines `leukotune diff` prints for two studies' records (tracking/study_records.py `StudyRecord`):
    config, resolved search space, data fingerprint and code version, each `A -> B`."""
    lines = [f"A: {a.study_id} (experiment {a.experiment}, {a.status})",
             f"B: {b.study_id} (experiment {b.experiment}, {b.status})"]
    for title, found in (("config", changes(config_without_space(a.config), config_without_space(b.config))),
                         ("search space", changes(a.space, b.space))):
        lines.append(f"{title}: " + (f"{len(found)} difference(s), A -> B" if found else "same"))
        lines += [f"  {change.describe()}" for change in found]
    for title, before, after in (("data fingerprint", a.fingerprint, b.fingerprint),
                                 ("code version", a.code_version, b.code_version)):
        lines.append(f"{title}: " + (f"same ({before or 'not recorded'})" if before == after
                                     else f"differs, {before or 'not recorded'} -> {after or 'not recorded'}"))
    return lines
