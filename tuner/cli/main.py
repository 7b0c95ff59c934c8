"""The `leukotune` command: data tools, one training run, a tuning study, cluster jobs, promotion, prediction."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from leukotune.tuner.cli import data, errors, models, server, serving, studies
from leukotune.tuner.process import configure_process

Handler = Callable[[argparse.Namespace], int]

# The command's groups, as its users think of them, each in the module named for it; the parser lists them in this
# order.
GROUPS = (data, studies, models, serving, server)

# Every command and the function that runs it. The group modules import only the standard library and
# tuner/cli/errors.py at the top: a handler imports what it needs (Ray, MLflow, torch) in its first lines, when it runs, so `leukotune --help` and
# `leukotune data check` load none of them.
COMMANDS: dict[str, Handler] = {
    "data synth": data.synth,
    "data check": data.check,
    "train": studies.train,
    "tune": studies.tune,
    "diff": studies.diff,
    "submit": studies.submit,
    "jobs status": studies.jobs_status,
    "jobs logs": studies.jobs_logs,
    "jobs stop": studies.jobs_stop,
    "promote": models.promote,
    "report": models.report,
    "evaluate": models.evaluate,
    "predict": models.predict,
    "weights fetch": models.weights_fetch,
    "serve": serving.serve,
    "mlflow-server": server.mlflow_server,
}


def build_parser() -> argparse.ArgumentParser:
    """Each group adds its commands; every command's parser sets `command` to its key in COMMANDS."""
    parser = argparse.ArgumentParser(prog="leukotune", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before any handler imports Ray, which reads some of the variables set here when it is imported; a study's
    # driver also hands SIGTERM to Tune.
    configure_process("tune" if args.command == "tune" else "cli")
    handler = COMMANDS[args.command]
    return errors.friendly_errors(lambda: handler(args))


if __name__ == "__main__":
    sys.exit(main())
