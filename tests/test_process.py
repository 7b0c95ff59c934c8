"""Process-wide state is set by the entry points, through tuner/process.py, and by nothing else: importing any
leukotune module changes no environment variable, logger, warning filter, signal handler or hook."""
from __future__ import annotations

import ast
import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from leukotune.tuner.process import configure_process

from conftest import REPO_ROOT
from test_layout import package_modules

# In a fresh interpreter: import every third-party module the package imports first (their own import-time setup
# is theirs), then each leukotune module in turn, comparing the process's state before and after each.
PROBE = textwrap.dedent("""
    import importlib, json, logging, os, signal, sys, warnings

    def state():
        loggers = {name: logger for name, logger in logging.root.manager.loggerDict.items()
                   if isinstance(logger, logging.Logger)}
        loggers[""] = logging.root
        return {
            "env": dict(os.environ),
            "loggers": {name: [logger.level, logger.disabled, logger.propagate, [id(f) for f in logger.filters]]
                        for name, logger in loggers.items()},
            "warnings": [repr(f) for f in warnings.filters],
            "signals": {str(s): repr(signal.getsignal(s)) for s in signal.valid_signals()
                        if s not in (signal.SIGKILL, signal.SIGSTOP)},
            "hooks": [repr(sys.excepthook), repr(sys.unraisablehook), repr(sys.displayhook)],
        }

    def changes(before, after):
        found = []
        for part in before:
            if part in ("env", "loggers", "signals"):
                for key in sorted(set(before[part]) | set(after[part])):
                    # A logger that comes into being at its library's default is no change.
                    if part == "loggers" and key not in before[part] and after[part][key] == [0, False, True, []]:
                        continue
                    if before[part].get(key) != after[part].get(key):
                        found.append(f"{part} {key}: {before[part].get(key)} -> {after[part].get(key)}")
            elif before[part] != after[part]:
                found.append(f"{part}: {sorted(set(after[part]) ^ set(before[part]))}")
        return found

    third_party, ours = json.loads(sys.argv[1])
    for name in third_party:
        try:
            importlib.import_module(name)
        except Exception:  # an optional dependency that is not installed, or a name that is no module
            pass
    report = {}
    for name in ours:
        before = state()
        importlib.import_module(name)
        found = changes(before, state())
        if found:
            report[name] = found
    print(json.dumps(report))
""")


def third_party_imports(paths) -> list[str]:
    """Every non-leukotune module the package imports, at any depth (optional ones included)."""
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module)
    return sorted(name for name in found if not name.startswith(("leukotune", "__future__")))


@pytest.mark.slow
def test_importing_a_module_changes_no_process_state():
    modules = package_modules()
    ours = sorted(name for name in modules if not name.endswith("__main__"))
    args = json.dumps([third_party_imports(modules.values()), ours])
    result = subprocess.run([sys.executable, "-c", PROBE, args], capture_output=True, text=True, timeout=600,
                            cwd=REPO_ROOT, env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {}, "\n".join(f"{module}: {change}" for module, found in report.items() for change in found)


ROLE_PROBE = textwrap.dedent("""
    import json, logging, os, signal, sys, warnings
    from leukotune.tuner.process import configure_process
    for role in sys.argv[1:]:
        configure_process(role)  # main() may run twice in one process (tests call it so)
    print(json.dumps({
        "env": {k: os.environ.get(k) for k in ("RAY_SCHEDULER_EVENTS", "RAY_AIR_NEW_OUTPUT", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")},
        "token_filters": len(logging.getLogger("ray._private.authentication.authentication_token_setup").filters),
        "train_level": logging.getLogger("ray.train").level,
        "warnings": len(warnings.filters),
        "sigterm": signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None),
        "unraisable": sys.unraisablehook is not sys.__unraisablehook__,
    }))
""")


def configured(*roles: str) -> dict:
    env = {**os.environ, "RAY_AIR_NEW_OUTPUT": "1"}  # a value the user exported wins
    env.pop("RAY_SCHEDULER_EVENTS", None)
    result = subprocess.run([sys.executable, "-c", ROLE_PROBE, *roles], capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_each_role_sets_what_its_process_needs_and_sets_it_once():
    cli, twice, tune, worker = configured("cli"), configured("cli", "cli"), configured("tune"), configured("worker")
    assert cli["env"] == {"RAY_SCHEDULER_EVENTS": "0", "RAY_AIR_NEW_OUTPUT": "1",
                          "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    assert cli["token_filters"] == 1 and twice == cli
    assert not cli["sigterm"] and tune["sigterm"]  # only a study's driver hands SIGTERM to Tune
    assert {k: v for k, v in tune.items() if k != "sigterm"} == {k: v for k, v in cli.items() if k != "sigterm"}
    assert worker["train_level"] == logging.WARNING and worker["unraisable"] and not cli["unraisable"]
    assert worker["env"]["RAY_SCHEDULER_EVENTS"] is None and worker["token_filters"] == 0


def test_an_unknown_role_is_refused():
    with pytest.raises(ValueError, match="cli, tune, worker"):
        configure_process("trainer")
