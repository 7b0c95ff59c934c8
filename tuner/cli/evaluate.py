"""`leukotune evaluate --model models:/NAME@ALIAS --data DIR`: metrics with intervals by patient on a labelled
folder."""
from __future__ import annotations

import argparse
import json
import os
import sys

from leukotune.tuner.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def add_evaluate(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("evaluate", help="metrics and 95%% intervals (by patient) of a registered model "
                                                    "on a labelled folder")
    evaluate.add_argument("--model", required=True, help="models:/NAME@alias (or models:/NAME/VERSION, runs:/ID/model)")
    evaluate.add_argument("--data", required=True, help="labelled folder in the C-NMC layout (training_data/fold_k/"
                                                        "{all,hem}, {all,hem}/, or a prelim folder with its CSV)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the patient bootstrap")
    evaluate.add_argument("--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI, else the local "
                                                 "SQLite store .leukotune/mlflow.db)")
    evaluate.set_defaults(handler=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    # Deferred: MLflow and torch load only when this command runs, not for every `leukotune --help`.
    from mlflow.exceptions import MlflowException

    from leukotune.tuner.registry.evaluate import evaluate_folder, format_report, json_safe
    from leukotune.tuner.registry.predict import check_model_uri, describe_version, load_model
    from leukotune.tuner.tracking.client import redact, resolve_tracking_uri

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    check_model_uri(args.model)
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    try:
        model = load_model(args.model, tracking_uri)
    except MlflowException as exc:
        print(f"error: MLflow at {redact(tracking_uri)}: {str(exc).strip().splitlines()[0][:300]}", file=sys.stderr)
        return EXIT_USAGE
    version = describe_version(args.model, tracking_uri)
    print(f"model {args.model}{f' = {version}' if version else ''}: {model.model_name}, "
          f"{model.preprocessing['image_size']} px {model.preprocessing['color']}", file=sys.stderr)
    result = evaluate_folder(model, args.data, batch_size=args.batch_size, seed=args.seed)
    if args.json:
        print(json.dumps(json_safe({"model": args.model, "version": version, **result}), indent=2))
    else:
        print("\n".join(format_report(result)))
    return EXIT_OK if result["cells"] else EXIT_FAILED
