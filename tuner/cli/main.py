"""The `leukotune` command: data tools, one training run, a tuning study, cluster jobs, promotion, prediction."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from leukotune.tuner.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE

# Handlers import what they need when they run: building the parser
# for `leukotune --help` or `leukotune data check` should not load Ray, MLflow and torch.


def _study_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="study YAML (defaults apply where it is silent)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=3e-4 (repeatable)")
    parser.add_argument("--data", help="dataset folder (C-NMC layout); default: the study's, else synthetic")
    parser.add_argument("--address", help="Ray cluster to join, HOST:PORT of its GCS (default: $RAY_ADDRESS, else a "
                        "live `ray start` cluster on this machine, else a private local Ray)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leukotune", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write a synthetic dataset in the C-NMC layout")
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--subjects", type=int, default=12)
    synth.add_argument("--cells-per-subject", type=int, default=40)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=cmd_data_synth)
    check = data.add_parser("check", help="validate a dataset folder; exit 2 when it is unusable")
    check.add_argument("root", type=Path)
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(handler=cmd_data_check)

    train = commands.add_parser("train", help="one training run on Ray Train workers")
    _study_args(train)
    train.set_defaults(handler=cmd_train)

    tune = commands.add_parser("tune", help="a tuning study: Ray Tune + Optuna + ASHA, tracked in MLflow")
    _study_args(tune)
    tune.add_argument("--resume", action="store_true",
                      help="continue the newest study of this name (one that already finished: print its leaderboard)")
    tune.set_defaults(handler=cmd_tune)

    from leukotune.tuner.cli import operations as cli_ops

    cli_ops.add_commands(commands)
    return parser


def cmd_data_synth(args: argparse.Namespace) -> int:
    from leukotune.data import write_synthetic_dataset

    summary = write_synthetic_dataset(args.out, subjects=args.subjects, cells_per_subject=args.cells_per_subject,
                                      seed=args.seed)
    print(json.dumps(summary, indent=2, default=str))
    print(f"check it with: leukotune data check {args.out}")
    return EXIT_OK


def cmd_data_check(args: argparse.Namespace) -> int:
    from leukotune.data import check_dataset, format_report

    report = check_dataset(args.root)
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else format_report(report))
    return EXIT_OK if report.usable else EXIT_USAGE


def cmd_train(args: argparse.Namespace) -> int:
    import ray

    from leukotune.tuner.cluster.capacity import read_cluster_shape
    from leukotune.tuner.cluster.ray_cluster import init_ray
    from leukotune.tuner.cluster.trial_resources import decide_trial_resources
    from leukotune.tuner.config import load_study
    from leukotune.tuner.preflight import check_storage, summarise_data
    from leukotune.tuner.train.ray_train import make_trainer

    study = load_study(args.config, args.overrides, args.data)
    storage = check_storage(study.storage_path)
    data = summarise_data(study)
    print(f"data: {data.cells} cells ({data.all} ALL, {data.hem} hem) of {data.subjects} subjects"
          f"{', synthetic' if data.synthetic else ''}; {len(data.skipped)} files skipped")
    init_ray(args.address, {})
    resources = decide_trial_resources(study, read_cluster_shape(), in_tune=False)
    print(f"resources: {resources.describe()}")
    result = make_trainer(study, resources, f"{study.name}-train-{time.strftime('%Y%m%d-%H%M%S')}", storage).fit()
    print_metrics_table(result.metrics, study.tune.metric)
    if result.checkpoint is not None:
        print(f"checkpoint (latest epoch; best.pt inside holds the best epoch): {result.checkpoint.path}")
    ray.shutdown()
    return EXIT_OK


def print_metrics_table(metrics: dict[str, Any], metric: str) -> None:
    keys = ["epoch", "best_epoch", f"best_{metric}", "val_accuracy", "val_balanced_accuracy", "val_roc_auc",
            "val_f1_weighted", "val_f1_macro", "val_precision_all", "val_recall_all", "val_precision_hem",
            "val_recall_hem", "val_loss", "train_loss"]
    print("\nfinal metrics")
    for key in keys:
        if key in metrics:
            value = metrics[key]
            print(f"  {key:<24} {value:.4f}" if isinstance(value, float) else f"  {key:<24} {value}")
    from leukotune.data import CLASS_NAMES

    cm = [[metrics.get(f"val_cm_true_{t}_pred_{p}", 0) for p in CLASS_NAMES] for t in CLASS_NAMES]
    names = "/".join(CLASS_NAMES)
    print(f"  confusion (rows true {names}, cols predicted {names}): {cm}")


def cmd_tune(args: argparse.Namespace) -> int:
    from leukotune.tuner.cluster.job_driver import records_note
    from leukotune.tuner.config import load_study
    from leukotune.tuner.tune import plan_study, run_study

    study = load_study(args.config, args.overrides, args.data)
    plan = plan_study(study, resume=args.resume)
    if plan.finished is not None:
        return report_finished_study(plan)
    data = plan.data_summary
    skipped = data.skipped
    print(f"data: {data.cells} cells of {data.subjects} subjects{' (synthetic)' if data.synthetic else ''}; "
          f"{len(skipped)} files skipped" + (f" (first: {skipped[0].path}: {skipped[0].reason})" if skipped else ""))
    print(describe_sides(plan.data_summary))
    outcome = run_study(plan, args.address)
    print_leaderboard(outcome.leaderboard, plan.study.tune.metric)
    if outcome.stopped:
        print(f"error: study stopped: {outcome.stopped}", file=sys.stderr)
        return EXIT_FAILED
    print_tracking_help(outcome)
    note = records_note(outcome.tracking_uri, plan.directory.parent)
    if note:
        print(note)
    if not outcome.complete:
        config = f" --config {args.config}" if args.config else ""
        print(f"\nstudy interrupted; continue it with: leukotune tune{config} --resume")
        return EXIT_FAILED
    return EXIT_OK


def report_finished_study(plan) -> int:
    """`--resume` of a study that already completed: nothing to run, so show what it found (Ray never starts)."""
    from dataclasses import fields

    from leukotune.tuner.tune import StudyOutcome

    # Field by field: a result saved by an older leukotune may lack a field added since, or hold one removed.
    outcome = StudyOutcome(**{field.name: plan.finished.get(field.name) for field in fields(StudyOutcome)})
    print(f"study {plan.study_id} already finished ({len(outcome.leaderboard)} trials); nothing to resume. "
          f"Start a new study by leaving out --resume.")
    print_leaderboard(outcome.leaderboard, plan.study.tune.metric)
    print_tracking_help(outcome)
    return EXIT_OK


def describe_sides(data) -> str:
    """Cells and subjects per side (a DataSummary); the test side is untouched until the search ends."""
    parts = [f"{side} {data.cells_on(side)} cells/{len(data.split_subjects.get(side, []))} subjects"
             for side in ("train", "val", "test")]
    source = {"prelim": "the C-NMC preliminary test folder", "subjects": "subjects set aside",
              "none": "none (data.test_fraction 0)"}.get(data.test_source, "?")
    return f"sides ({data.split_method} split): {', '.join(parts)}; test side: {source}"


def print_leaderboard(rows: list[dict[str, Any]], metric: str) -> None:
    print(f"\nleaderboard ({metric}, best epoch of each trial; test: the top trials once on the held-out subjects,"
          f" 95% CI by patient)")
    print(f"  {'rank':<5}{'trial':<12}{'status':<12}{'epochs':<8}{metric:<18}{'test (95% CI)':<24}{'last_acc':<9}"
          f"{'device':<8}params")
    for rank, row in enumerate(rows, 1):
        best = row.get("best")
        best_text = f"{best:.4f}" if isinstance(best, (int, float)) else "-"
        acc = row.get("val_accuracy")
        acc_text = f"{acc:.4f}" if isinstance(acc, (int, float)) else "-"
        params = " ".join(f"{k}={_short(v)}" for k, v in row["config"].items())
        device = str(row.get("device") or "-").split(" ")[0]  # cuda:0, not the GPU's name
        print(f"  {rank:<5}{row['trial_id']:<12}{row['status']:<12}{row['epochs']!s:<8}{best_text:<18}"
              f"{_test_text(row):<24}{acc_text:<9}{device:<8}{params}")


def _test_text(row: dict[str, Any]) -> str:
    test, interval = row.get("test"), row.get("test_ci95")
    if not isinstance(test, (int, float)):
        return "-"
    return f"{test:.4f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{test:.4f}"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def print_tracking_help(outcome) -> None:
    from leukotune.tuner.tracking.client import redact, training_view_url

    uri = outcome.tracking_uri
    print(f"\nMLflow: experiment {outcome.experiment_id}, parent run {outcome.parent_run_id} at {redact(uri)}")
    if uri.startswith("sqlite:"):
        print(f"open the UI with: .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
              f"  (then {training_view_url('http://127.0.0.1:5000', outcome.experiment_id)})")
    else:
        print(f"open {training_view_url(redact(uri), outcome.experiment_id)}")


def main(argv: list[str] | None = None) -> int:
    import os

    from leukotune.tuner.cli.errors import friendly_errors

    # Read by Ray when it is imported: the autoscaler's events ("Adding 2 node(s) of type gpu_worker") would reach
    # every driver's console; a study's own waiting line says how many workers are up.
    os.environ.setdefault("RAY_SCHEDULER_EVENTS", "0")
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return friendly_errors(lambda: handler(args))


if __name__ == "__main__":
    sys.exit(main())
