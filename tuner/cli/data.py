"""`leukotune data ...`: a synthetic dataset in the C-NMC layout, and the check of a dataset folder."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from leukotune.tuner.cli.errors import EXIT_OK, EXIT_USAGE


def add_commands(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write a synthetic dataset in the C-NMC layout")
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--subjects", type=int, default=12)
    synth.add_argument("--cells-per-subject", type=int, default=40)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(command="data synth")
    check = data.add_parser("check", help="validate a dataset folder; exit 2 when it is unusable")
    check.add_argument("root", type=Path)
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(command="data check")


def synth(args: argparse.Namespace) -> int:
    from leukotune.data import write_synthetic_dataset

    summary = write_synthetic_dataset(args.out, subjects=args.subjects, cells_per_subject=args.cells_per_subject,
                                      seed=args.seed)
    print(json.dumps(summary, indent=2, default=str))
    print(f"check it with: leukotune data check {args.out}")
    return EXIT_OK


def check(args: argparse.Namespace) -> int:
    from leukotune.data import check_dataset, format_report

    report = check_dataset(args.root)
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else format_report(report))
    return EXIT_OK if report.usable else EXIT_USAGE
