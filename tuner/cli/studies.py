"""Studies: `leukotune train` (one training run), `leukotune tune` (a tuning study), and a study on a cluster as a
Ray Job (`leukotune submit`, `leukotune jobs status|logs|stop`)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from leukotune.tuner.cli.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK


def add_commands(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="one training run on Ray Train workers")
    _study_args(train)
    train.set_defaults(command="train")

    tune = commands.add_parser("tune", help="a tuning study: Ray Tune + Optuna + ASHA, tracked in MLflow")
    _study_args(tune)
    tune.add_argument("--resume", action="store_true",
                      help="continue the newest study of this name (one that already finished: print its leaderboard)")
    tune.set_defaults(command="tune")

    diff = commands.add_parser("diff", help="what differs between two studies: config, data fingerprint, code "
                                            "version, search space (read from MLflow)")
    diff.add_argument("study_a", metavar="STUDY_A", help="a study id (or an experiment: its newest study)")
    diff.add_argument("study_b", metavar="STUDY_B", help="a study id (or an experiment: its newest study)")
    diff.add_argument("--tracking-uri", help="the MLflow store (default: $MLFLOW_TRACKING_URI, else the local one "
                                             "under .leukotune)")
    diff.set_defaults(command="diff")

    submit = commands.add_parser("submit", help="run a tuning study on a Ray cluster as a Ray Job")
    _dashboard_arg(submit)
    submit.add_argument("--config", type=Path, required=True, help="study YAML, inside the uploaded project folder")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable); passed on to `leukotune tune`")
    submit.add_argument("--data", help="dataset folder as seen from the cluster's head node")
    submit.add_argument("--working-dir", type=Path, default=Path("."),
                        help="project folder uploaded as the job's working_dir (default: the current folder)")
    submit.add_argument("--tracking-uri", help="MLflow server as seen from the head node, where the study's "
                                               "driver runs (default: $MLFLOW_TRACKING_URI)")
    submit.add_argument("--follow", action="store_true",
                        help="stream the job's logs and exit with its outcome (0 succeeded, 1 failed or stopped)")
    submit.set_defaults(command="submit")

    jobs = commands.add_parser("jobs", help="status, logs or stop of a submitted study")
    actions = jobs.add_subparsers(dest="jobs_command", required=True)
    for name, text in (("status", "a job's status"), ("logs", "a job's logs so far (or --follow)"),
                       ("stop", "stop a running job (its trials are marked KILLED)")):
        action = actions.add_parser(name, help=text)
        action.add_argument("job_id", metavar="JOB_ID")
        _dashboard_arg(action)
        if name == "logs":
            action.add_argument("--follow", action="store_true",
                                help="stream until the job ends; exit with its outcome")
        action.set_defaults(command=f"jobs {name}")


def _study_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="study YAML (defaults apply where it is silent)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=3e-4 (repeatable)")
    parser.add_argument("--data", help="dataset folder (C-NMC layout); default: the study's, else synthetic")
    parser.add_argument("--address", help="Ray cluster to join, HOST:PORT of its GCS (default: $RAY_ADDRESS, else a "
                        "live `ray start` cluster on this machine, else a private local Ray)")


def _dashboard_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265 (default: $RAY_ADDRESS, else "
                                          "http://127.0.0.1:8265); the Ray token is read from RAY_AUTH_TOKEN, "
                                          "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token")


def _info(message: str) -> None:
    print(message, file=sys.stderr)


# ---------------------------------------------------------------- on this machine's Ray (or one it joins)

def train(args: argparse.Namespace) -> int:
    import ray

    from leukotune.tuner.cluster.capacity import read_cluster_shape
    from leukotune.tuner.cluster.ray_cluster import init_ray
    from leukotune.tuner.cluster.trial_resources import decide_trial_resources
    from leukotune.tuner.config import load_study
    from leukotune.tuner.preflight import check_storage, summarise_data
    from leukotune.tuner.train.ray_train import make_trainer
    from leukotune.tuner.tune.console import print_final_metrics, print_training_data

    study = load_study(args.config, args.overrides, args.data)
    storage = check_storage(study.storage_path)
    print_training_data(summarise_data(study))
    init_ray(args.address, {})
    resources = decide_trial_resources(study, read_cluster_shape(), in_tune=False)
    print(f"resources: {resources.describe()}")
    result = make_trainer(study, resources, f"{study.name}-train-{time.strftime('%Y%m%d-%H%M%S')}", storage).fit()
    print_final_metrics(result.metrics, study.tune.metric)
    if result.checkpoint is not None:
        print(f"checkpoint (latest epoch; best.pt inside holds the best epoch): {result.checkpoint.path}")
    ray.shutdown()
    return EXIT_OK


def tune(args: argparse.Namespace) -> int:
    from leukotune.tuner.cluster.job_driver import records_note
    from leukotune.tuner.config import load_study
    from leukotune.tuner.tune import StudyOutcome, plan_study, run_study
    from leukotune.tuner.tune.console import (
        print_finished_study,
        print_leaderboard,
        print_study_data,
        print_tracking_help,
    )

    study = load_study(args.config, args.overrides, args.data)
    plan = plan_study(study, resume=args.resume)
    if plan.finished is not None:  # nothing to run (Ray never starts): show what the study found
        print_finished_study(plan.study_id, StudyOutcome.from_saved(plan.finished), plan.study.tune.metric)
        return EXIT_OK
    print_study_data(plan.data_summary)
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


def diff(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from leukotune.tuner.tracking.client import check_reachable, resolve_tracking_uri
    from leukotune.tuner.tracking.study_records import read_study, study_runs_named
    from leukotune.tuner.tune.differences import describe_differences

    uri = resolve_tracking_uri(args.tracking_uri)
    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    a, b = (read_study(client, study_runs_named(client, name)[0]) for name in (args.study_a, args.study_b))
    print("\n".join(describe_differences(a, b)))
    return EXIT_OK


# ---------------------------------------------------------------- as a Ray Job on a cluster

def submit(args: argparse.Namespace) -> int:
    from leukotune.tuner.cluster import jobs
    from leukotune.tuner.config import load_study

    # Every value is checked before the cluster is contacted: a typo costs a second, not an upload.
    study = load_study(args.config, args.overrides, args.data)
    client = jobs.connect(args.address)
    job_id = jobs.submit_study(client, study, args.config, args.overrides, args.data, args.working_dir,
                               args.tracking_uri, log=_info)
    address = client.get_address()
    print(f"submitted job: {job_id}")
    _info(f"follow: leukotune jobs logs {job_id} --follow --address {address}\n"
          f"stop:   leukotune jobs stop {job_id} --address {address}")
    if not args.follow:
        return EXIT_OK
    return _follow(jobs, client, job_id)


def jobs_status(args: argparse.Namespace) -> int:
    from leukotune.tuner.cluster import jobs

    info = jobs.job_info(jobs.connect(args.address), args.job_id)
    print("\n".join(jobs.describe_job(info)))
    return EXIT_OK


def jobs_logs(args: argparse.Namespace) -> int:
    from leukotune.tuner.cluster import jobs

    client = jobs.connect(args.address)
    if not args.follow:
        sys.stdout.write(jobs.job_logs(client, args.job_id))
        return EXIT_OK
    return _follow(jobs, client, args.job_id)


def jobs_stop(args: argparse.Namespace) -> int:
    from leukotune.tuner.cluster import jobs

    status = jobs.stop_job(jobs.connect(args.address), args.job_id)
    print(f"job {args.job_id}: {status}")
    return EXIT_OK


def _follow(jobs, client, job_id: str) -> int:
    """Stream a job's logs until it ends (`jobs`: tuner.cluster.jobs); exit with its outcome."""
    try:
        status = jobs.follow(client, job_id)
    except KeyboardInterrupt:
        _info(f"\nstopped following; the job keeps running (leukotune jobs stop {job_id} to end it)")
        return EXIT_INTERRUPTED
    _info(f"job {job_id}: {status}")
    return jobs.exit_code_for(status)
