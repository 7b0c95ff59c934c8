"""`leukotune mlflow-server`: the tracking server and UI (SQLite by default, PostgreSQL for a team)."""
from __future__ import annotations

import argparse
import sys

from leukotune.tuner.cli.errors import EXIT_OK


def add_commands(commands: argparse._SubParsersAction) -> None:
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
    server.set_defaults(command="mlflow-server")


def mlflow_server(args: argparse.Namespace) -> int:
    from leukotune.tuner.cluster import mlflow_server as server

    plan = server.plan_server(args.host, args.port, args.backend_store_uri, args.artifacts_destination,
                              expose=args.expose, auth=args.auth, workers=args.workers, allowed_hosts=args.allowed_hosts)
    server.check_port_free(args.host or (server.EXPOSED if args.expose else server.LOOPBACK), args.port)
    server.prepare_backend_store(plan)
    for line in server.describe(plan):
        print(line, file=sys.stderr if line.startswith("WARNING") else sys.stdout)
    server.exec_server(plan)
    return EXIT_OK  # not reached: the process is now `mlflow server`
