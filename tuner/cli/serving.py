"""Serving: `leukotune serve` (the champion as a Ray Serve application on the cluster that tunes, following its
alias) and `leukotune serve --stop`."""
from __future__ import annotations

import argparse
import sys

from leukotune.tuner.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE

# Defaults repeated from tuner/serving/ray_serve.py: importing it here would load Ray for every `leukotune` command;
# tests/test_ray_serve_body.py checks that they match.
DEFAULT_PORT = 8000
DEFAULT_POLL_S = 30.0


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve a registered model (the champion) with Ray Serve on the cluster "
                                              "that tunes; POST /invocations as `mlflow models serve` takes it")
    serve.add_argument("--model", help="models:/NAME@alias (followed when the alias moves), models:/NAME/N or "
                                       "models:/<model_id>")
    serve.add_argument("--stop", action="store_true", help="take the served application off the cluster (or end "
                                                           "the foreground `leukotune serve` on a private Ray)")
    serve.add_argument("--address", help="Ray cluster (HOST:PORT of the head's GCS, or auto; default: RAY_ADDRESS, "
                                         "the `ray start` cluster on this machine, else a private local Ray held "
                                         "in the foreground)")
    serve.add_argument("--host", default="127.0.0.1", help="interface Serve's HTTP proxy binds (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT})")
    serve.add_argument("--replicas", type=int, default=1, help="replicas of the model, one CPU each (default 1)")
    serve.add_argument("--poll-s", type=float, default=DEFAULT_POLL_S,
                       help=f"seconds between looks at the alias (default {DEFAULT_POLL_S:g})")
    serve.add_argument("--tracking-uri", help="MLflow server every replica reads the model from (default: "
                                              "$MLFLOW_TRACKING_URI, else the local SQLite store .leukotune/mlflow.db)")
    serve.set_defaults(command="serve")


def serve(args: argparse.Namespace) -> int:
    from leukotune.tuner.serving import serve_control

    if args.stop:
        return EXIT_OK if serve_control.stop_serving(args.address) else EXIT_FAILED
    if not args.model:
        print("error: give --model models:/NAME@alias (or --stop)", file=sys.stderr)
        return EXIT_USAGE
    from leukotune.tuner.tracking.client import resolve_tracking_uri

    request = serve_control.ServeRequest(args.model, resolve_tracking_uri(args.tracking_uri), args.address,
                                         args.host, args.port, args.replicas, args.poll_s)
    if serve_control.start_serving(request):
        serve_control.hold_in_foreground(request)
    else:
        print("the application stays on the cluster: `leukotune serve --stop` (with the same --address) removes it")
    return EXIT_OK
