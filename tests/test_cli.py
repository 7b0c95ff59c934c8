"""The `leukotune` command's shape: one table of commands, grouped by what users do, and a parser that loads none of
Ray, MLflow or torch."""
from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from leukotune.tuner.cli.main import COMMANDS, build_parser

from conftest import REPO_ROOT

HEAVY = ("ray", "mlflow", "torch", "optuna")


def parser_commands(parser: argparse.ArgumentParser, prefix: str = "") -> set[str]:
    """Every runnable command the parser knows, as `data check`, `jobs logs`, `tune`."""
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= parser_commands(sub, f"{prefix}{name} ") or {f"{prefix}{name}"}
    return found


# One command line per command: what its parser needs at least.
SAMPLES = {"data synth": "data synth --out x", "data check": "data check x", "train": "train", "tune": "tune",
           "diff": "diff a b",
           "submit": "submit --config x", "jobs status": "jobs status j", "jobs logs": "jobs logs j",
           "jobs stop": "jobs stop j", "promote": "promote --experiment x", "report": "report --model m",
           "evaluate": "evaluate --model m --data d",
           "predict": "predict --model m x", "weights fetch": "weights fetch", "mlflow-server": "mlflow-server",
           "serve": "serve --model m"}


def test_every_command_is_in_the_one_table_and_its_parser_names_it():
    parser = build_parser()
    assert parser_commands(parser) == set(COMMANDS) == set(SAMPLES)
    for command, line in SAMPLES.items():
        assert parser.parse_args(line.split()).command == command  # the key that finds its handler


def test_only_the_tables_handlers_import_when_they_run():
    """The one pattern: a group module imports the standard library at the top, and a handler imports what it needs
    (Ray, MLflow, torch) in its own body; no other function in tuner/cli/ imports."""
    handlers = {(f.__module__.rsplit(".", 1)[1], f.__name__) for f in COMMANDS.values()}
    for path in sorted((REPO_ROOT / "tuner" / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and (path.stem, node.name) not in handlers:
                inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
                assert not inner, f"{path.name}: {node.name} imports inside (line {inner[0].lineno})"


@pytest.mark.parametrize("args", [["--help"], ["tune", "--help"], ["weights", "fetch", "--help"], ["data", "check"]],
                         ids=lambda args: " ".join(args))
def test_help_and_data_check_load_no_ray_mlflow_or_torch(args, synthetic_dataset):
    if args == ["data", "check"]:
        args = [*args, str(synthetic_dataset)]
    script = ("import sys\nfrom leukotune.tuner.cli import main\n"
              "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as exc:\n    code = exc.code\n"
              f"print('loaded', code, *[m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)
    assert result.stderr.strip().splitlines()[-1] == "loaded 0", result.stderr[-2000:]
