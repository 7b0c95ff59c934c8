"""Cluster and model-lifecycle commands: submit, jobs, mlflow-server, promote, predict."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from leukotune.tuner.cli.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

# Handlers import what they need when they run: building the parser
# for `leukotune --help` or `leukotune data check` should not load Ray, MLflow and torch.
from leukotune.tuner.cli.evaluate import add_evaluate
from leukotune.tuner.cli.weights import add_weights


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register the operations commands on the `leukotune` parser."""
    _add_submit(commands)
    _add_jobs(commands)
    _add_server(commands)
    _add_promote(commands)
    _add_predict(commands)
    add_evaluate(commands)
    add_weights(commands)


def _address_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265 (default: $RAY_ADDRESS, else "
                                          "http://127.0.0.1:8265); the Ray token is read from RAY_AUTH_TOKEN, "
                                          "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token")


def _tracking_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI, else the local "
                                               "SQLite store .leukotune/mlflow.db)")


def _add_submit(commands) -> None:
    submit = commands.add_parser("submit", help="run a tuning study on a Ray cluster as a Ray Job")
    _address_arg(submit)
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
    submit.set_defaults(handler=cmd_submit)


def _add_jobs(commands) -> None:
    jobs = commands.add_parser("jobs", help="status, logs or stop of a submitted study")
    actions = jobs.add_subparsers(dest="jobs_command", required=True)
    for name, handler, text in (("status", cmd_jobs_status, "a job's status"),
                                ("logs", cmd_jobs_logs, "a job's logs so far (or --follow)"),
                                ("stop", cmd_jobs_stop, "stop a running job (its trials are marked KILLED)")):
        action = actions.add_parser(name, help=text)
        action.add_argument("job_id", metavar="JOB_ID")
        _address_arg(action)
        if name == "logs":
            action.add_argument("--follow", action="store_true",
                                help="stream until the job ends; exit with its outcome")
        action.set_defaults(handler=handler)


def _add_server(commands) -> None:
    server = commands.add_parser("mlflow-server", help="run the MLflow tracking server (UI, API, model registry)")
    server.add_argument("--host", help="interface to bind (default 127.0.0.1; 0.0.0.0 with --expose)")
    server.add_argument("--port", type=int, default=5000)
    server.add_argument("--backend-store-uri", help="default: SQLite in .leukotune/server/mlflow.db; a team uses "
                                                    "PostgreSQL, e.g. postgresql://user@db:5432/mlflow (password "
                                                    "in the URI, PGPASSWORD or ~/.pgpass; checked before start)")
    server.add_argument("--artifacts-destination", help="where served artifacts are stored (default "
                                                        ".leukotune/server/mlartifacts; or s3://bucket/path)")
    server.add_argument("--expose", action="store_true", help="bind 0.0.0.0 so cluster nodes can reach it "
                                                              "(see the warning it prints)")
    server.add_argument("--auth", action="store_true", help="MLflow's basic authentication (--app-name basic-auth; "
                                                            "needs mlflow[auth]); the first start needs "
                                                            "MLFLOW_AUTH_ADMIN_PASSWORD")
    server.add_argument("--allowed-hosts", help="Host headers MLflow accepts when reached by name (default: "
                                                "localhost and private IPs)")
    server.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    server.set_defaults(handler=cmd_mlflow_server)


def _add_promote(commands) -> None:
    # Defaults live in tuner.promote; importing it here would load MLflow for every `leukotune` command.
    promote = commands.add_parser("promote", help="register the best finished trial's model and alias it")
    promote.add_argument("--experiment", required=True, help="MLflow experiment of the study")
    promote.add_argument("--metric", help="run metric to rank by (default best_val_f1_weighted: each trial's best "
                                          "epoch)")
    promote.add_argument("--mode", choices=("max", "min"), default="max", help="is a higher metric better (max)?")
    promote.add_argument("--min", dest="minimum", type=float,
                         help="refuse (exit 1) when the chosen trial's gate metric (its test score) is below this")
    promote.add_argument("--max", dest="maximum", type=float,
                         help="refuse (exit 1) when the chosen trial's gate metric is above this")
    promote.add_argument("--gate-metric", help="run metric --min/--max judge (default: the test counterpart of "
                                               "--metric, e.g. test_f1_weighted); a trial without it is refused")
    promote.add_argument("--alias", help="alias to set (default champion)")
    promote.add_argument("--model-name", help="registered model name (default leukotune-<experiment>)")
    promote.add_argument("--json", action="store_true", help="print one JSON object")
    _tracking_arg(promote)
    promote.set_defaults(handler=cmd_promote)


def _add_predict(commands) -> None:
    predict = commands.add_parser("predict", help="classify cell images with a registered model")
    predict.add_argument("--model", required=True,
                         help="models:/NAME@alias (or models:/NAME/VERSION, models:/MODEL_ID, runs:/ID/model)")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    predict.add_argument("--tta", action="store_true", help="average the four 90-degree rotations")
    predict.add_argument("--json", action="store_true", help="print one JSON object")
    predict.add_argument("--batch-size", type=int, default=32)
    _tracking_arg(predict)
    predict.set_defaults(handler=cmd_predict)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _info(message: str) -> None:
    print(message, file=sys.stderr)


# ---------------------------------------------------------------- Ray jobs

def cmd_submit(args: argparse.Namespace) -> int:
    from leukotune.tuner.cluster import jobs
    from leukotune.tuner.config import load_study

    # Every value is checked before the cluster is contacted: a typo costs a second, not an upload.
    study = load_study(args.config, args.overrides, args.data)
    client = jobs.connect(args.address)
    job_id = jobs.submit_study(client, study, args.config, args.overrides, args.data, args.working_dir, args.tracking_uri,
                               log=_info)
    address = client.get_address()
    print(f"submitted job: {job_id}")
    _info(f"follow: leukotune jobs logs {job_id} --follow --address {address}\n"
          f"stop:   leukotune jobs stop {job_id} --address {address}")
    if not args.follow:
        return EXIT_OK
    return _follow(client, job_id)


def _follow(client, job_id: str) -> int:
    from leukotune.tuner.cluster import jobs

    try:
        status = jobs.follow(client, job_id)
    except KeyboardInterrupt:
        _info(f"\nstopped following; the job keeps running (leukotune jobs stop {job_id} to end it)")
        return EXIT_INTERRUPTED
    _info(f"job {job_id}: {status}")
    return jobs.exit_code_for(status)


def cmd_jobs_status(args: argparse.Namespace) -> int:
    from leukotune.tuner.cluster import jobs

    info = jobs.job_info(jobs.connect(args.address), args.job_id)
    print("\n".join(jobs.describe_job(info)))
    return EXIT_OK


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    from leukotune.tuner.cluster import jobs

    client = jobs.connect(args.address)
    if not args.follow:
        sys.stdout.write(jobs.job_logs(client, args.job_id))
        return EXIT_OK
    return _follow(client, args.job_id)


def cmd_jobs_stop(args: argparse.Namespace) -> int:
    from leukotune.tuner.cluster import jobs

    status = jobs.stop_job(jobs.connect(args.address), args.job_id)
    print(f"job {args.job_id}: {status}")
    return EXIT_OK


# ---------------------------------------------------------------- MLflow

def cmd_mlflow_server(args: argparse.Namespace) -> int:
    from leukotune.tuner.cluster import mlflow_server as server

    plan = server.plan_server(args.host, args.port, args.backend_store_uri, args.artifacts_destination,
                              expose=args.expose, auth=args.auth, workers=args.workers, allowed_hosts=args.allowed_hosts)
    server.check_port_free(args.host or (server.EXPOSED if args.expose else server.LOOPBACK), args.port)
    server.prepare_backend_store(plan)
    for line in server.describe(plan):
        print(line, file=sys.stderr if line.startswith("WARNING") else sys.stdout)
    server.exec_server(plan)
    return EXIT_OK  # not reached: the process is now `mlflow server`


def _quiet_downloads() -> None:
    # MLflow draws a progress bar per download; for a few small model files it is only noise.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _mlflow_failure(exc: Exception, tracking_uri: str) -> int:
    """A refused or failed MLflow request as one line; 401/403 say which credentials MLflow reads."""
    from leukotune.tuner.tracking.client import redact

    text = redact(str(getattr(exc, "message", exc))).strip()
    first = text.splitlines()[0][:300] if text else type(exc).__name__
    if "401" in first or "403" in first or "not authenticated" in text:
        return _fail(f"MLflow at {redact(tracking_uri)} refused the request (authentication): set "
                     f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    return _fail(f"MLflow at {redact(tracking_uri)}: {first}")


def cmd_promote(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from leukotune.tuner.registry.promote import DEFAULT_ALIAS, DEFAULT_METRIC, promote, promotion_json, summary_lines
    from leukotune.tuner.tracking.client import resolve_tracking_uri

    _quiet_downloads()
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    try:
        result = promote(tracking_uri, args.experiment, args.metric or DEFAULT_METRIC, args.mode, args.minimum,
                         args.maximum, args.alias or DEFAULT_ALIAS, args.model_name, log=_info,
                         gate_metric=args.gate_metric)
    except MlflowException as exc:
        return _mlflow_failure(exc, tracking_uri)
    if args.json:
        print(json.dumps(promotion_json(result), indent=2))
    else:
        for line in summary_lines(result):
            print(line, file=sys.stderr if result.refused else sys.stdout)
    return EXIT_FAILED if result.refused else EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from leukotune.tuner.registry.predict import (
        check_model_uri,
        describe_version,
        format_table,
        list_images,
        load_model,
        predict_files,
    )
    from leukotune.tuner.tracking.client import resolve_tracking_uri

    _quiet_downloads()
    check_model_uri(args.model)
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    files = list_images(args.paths)
    if not files:
        return _fail(f"no images (.bmp .png .jpg .jpeg .tif .tiff) under {' '.join(args.paths)}")
    try:
        model = load_model(args.model, tracking_uri)
    except MlflowException as exc:
        return _mlflow_failure(exc, tracking_uri)
    version = describe_version(args.model, tracking_uri)
    _info(f"model {args.model}{f' = {version}' if version else ''}: {model.model_name}, "
          f"{model.preprocessing['image_size']} px {model.preprocessing['color']}"
          f"{', TTA over 4 rotations' if args.tta else ''}")
    rows = predict_files(model, files, tta=args.tta, batch_size=args.batch_size)
    classified = sum(r.error is None for r in rows)
    if args.json:
        print(json.dumps({"model": args.model, "version": version, "tta": args.tta, "classified": classified,
                          "errors": len(rows) - classified, "predictions": [r.to_dict() for r in rows]}, indent=2))
    else:
        print("\n".join(format_table(rows)))
        _info(f"{classified} classified, {len(rows) - classified} unreadable")
    return EXIT_OK if classified else EXIT_FAILED
