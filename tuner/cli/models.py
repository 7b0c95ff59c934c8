"""Models: `leukotune promote` (register a study's best trial under an alias), `leukotune report` (a registered
version's model card and reporting checklist, written again from the records), `leukotune evaluate` (metrics with
intervals by patient on a labelled folder), `leukotune predict` (classify images), and `leukotune weights fetch`
(torchvision's ImageNet files, downloaded once by a person)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from leukotune.tuner.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE

# Listed here rather than read from leukotune.models: building the parser for `--help` should not import torch.
# tests/test_weights_fetch.py checks that this matches `imagenet_archs()`.
ARCHS = ("convnext_tiny", "efficientnet_b0", "efficientnet_b1", "mobilenet_v2", "resnet50")


def add_commands(commands: argparse._SubParsersAction) -> None:
    _add_promote(commands)
    _add_report(commands)
    _add_evaluate(commands)
    _add_predict(commands)
    _add_weights(commands)


def _tracking_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI, else the local "
                                               "SQLite store .leukotune/mlflow.db)")


def _add_promote(commands: argparse._SubParsersAction) -> None:
    # Defaults live in tuner/registry/promote.py; importing it here would load MLflow for every `leukotune` command.
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
    target = promote.add_mutually_exclusive_group()
    target.add_argument("--sensitivity", type=_rate, metavar="X",
                        help="operating point: the largest threshold on calibrated P(ALL) whose sensitivity (recall "
                             "of ALL) on the trial's validation cells is >= X (default: threshold 0.5)")
    target.add_argument("--specificity", type=_rate, metavar="X",
                        help="operating point: the smallest threshold whose validation specificity (recall of hem) "
                             "is >= X")
    promote.add_argument("--alias", help="alias to set (default champion)")
    promote.add_argument("--model-name", help="registered model name (default leukotune-<experiment>)")
    promote.add_argument("--json", action="store_true", help="print one JSON object")
    _tracking_arg(promote)
    promote.set_defaults(command="promote")


def _add_report(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser("report", help="a registered version's model card with its reporting checklist "
                                                "(TRIPOD+AI, CLAIM), written again from the records, as Markdown")
    report.add_argument("--model", required=True, help="models:/NAME@alias or models:/NAME/VERSION")
    report.add_argument("--out", type=Path, help="write the Markdown to this file (default: print it)")
    _tracking_arg(report)
    report.set_defaults(command="report")


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
    return value


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("evaluate", help="metrics and 95%% intervals (by patient) of a registered model "
                                                    "on a labelled folder")
    evaluate.add_argument("--model", required=True, help="models:/NAME@alias (or models:/NAME/VERSION, runs:/ID/model)")
    evaluate.add_argument("--data", required=True, help="labelled folder in the C-NMC layout (training_data/fold_k/"
                                                        "{all,hem}, {all,hem}/, or a prelim folder with its CSV)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the patient bootstrap")
    _tracking_arg(evaluate)
    evaluate.set_defaults(command="evaluate")


def _add_predict(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser("predict", help="classify cell images with a registered model")
    predict.add_argument("--model", required=True,
                         help="models:/NAME@alias (or models:/NAME/VERSION, models:/MODEL_ID, runs:/ID/model)")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    predict.add_argument("--tta", action="store_true", help="average the four 90-degree rotations")
    predict.add_argument("--json", action="store_true", help="print one JSON object")
    predict.add_argument("--batch-size", type=int, default=32, help="cells per forward pass")
    batch = predict.add_argument_group(
        "batch prediction on Ray", "With --out the cells are predicted by Ray Data actors over the cluster's workers "
        "(one per GPU, else one per CPU) and written to FILE part by part; run it again on the same FILE to resume. "
        "Without --out, one process prints a table (or --json).")
    batch.add_argument("--out", metavar="FILE", help="results table, .csv or .parquet: file, class, p_all, error "
                                                     "(unreadable files), model")
    batch.add_argument("--address", help="Ray cluster to run on, HOST:PORT (default: $RAY_ADDRESS, else a running "
                                         "`ray start` cluster, else a private local Ray); needs --out")
    # Mirrors batch_predict.DEFAULT_PART_SIZE: importing it here would load Ray for every `leukotune` command.
    batch.add_argument("--part-size", type=int, default=1000,
                       help="cells per part file: what a kill can lose, at most one part per actor (default 1000)")
    _tracking_arg(predict)
    predict.set_defaults(command="predict")


def _add_weights(commands: argparse._SubParsersAction) -> None:
    weights = commands.add_parser("weights", help="pretrained weights for the transfer models")
    actions = weights.add_subparsers(dest="weights_command", required=True)
    fetch = actions.add_parser(
        "fetch", help="download torchvision's ImageNet weights for train.weights=imagenet",
        description="Download torchvision's ImageNet weight files (the URLs in torchvision's weight enums) and check "
                    "each against the SHA-256 prefix in its file name, as torch.hub does. A download goes to a "
                    "temporary file beside the target and is renamed only once it checks out, so an interrupted or "
                    "refused one leaves nothing behind. By default the files go where studies look for them: "
                    "$LEUKOTUNE_WEIGHTS_DIR when set, else torch's hub cache ($TORCH_HOME/hub/checkpoints). "
                    "Studies themselves never download.")
    fetch.add_argument("archs", nargs="*", metavar="ARCH", help=f"which weights: {', '.join(ARCHS)} (default: all)")
    fetch.add_argument("--dir", type=Path, help="save here instead (then point LEUKOTUNE_WEIGHTS_DIR at it)")
    fetch.add_argument("--mirror", metavar="BASE_URL",
                       help="fetch the same file names from this base URL instead of download.pytorch.org")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    fetch.set_defaults(command="weights fetch")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _info(message: str) -> None:
    print(message, file=sys.stderr)


# ---------------------------------------------------------------- the model registry

def promote(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from leukotune.tuner.registry.promote import DEFAULT_ALIAS, DEFAULT_METRIC, promotion_json, summary_lines
    from leukotune.tuner.registry.promote import promote as promote_best
    from leukotune.tuner.tracking.client import request_failure, resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    try:
        result = promote_best(tracking_uri, args.experiment, args.metric or DEFAULT_METRIC, args.mode, args.minimum,
                              args.maximum, args.alias or DEFAULT_ALIAS, args.model_name, log=_info,
                              gate_metric=args.gate_metric, sensitivity=args.sensitivity,
                              specificity=args.specificity)
    except MlflowException as exc:
        return _fail(request_failure(exc, tracking_uri))
    if args.json:
        print(json.dumps(promotion_json(result), indent=2))
    else:
        for line in summary_lines(result):
            print(line, file=sys.stderr if result.refused else sys.stdout)
    return EXIT_FAILED if result.refused else EXIT_OK


def report(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from leukotune.tuner.registry.model_card import NotAVersionError, registered_version, version_card
    from leukotune.tuner.tracking.client import check_reachable, request_failure, resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    check_reachable(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        version = registered_version(client, args.model)
        card = version_card(client, version)
    except NotAVersionError as exc:
        return _fail(str(exc))
    except MlflowException as exc:
        return _fail(request_failure(exc, tracking_uri))
    if args.out is None:
        print(card, end="")
        return EXIT_OK
    args.out.write_text(card)
    _info(f"model card of version {version.version} of {version.name} (run {version.run_id}) written to {args.out}")
    return EXIT_OK


# ---------------------------------------------------------------- judging a model

def evaluate(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from leukotune.tuner.evaluation.evaluate import evaluate_folder, format_report, json_safe
    from leukotune.tuner.evaluation.logged_models import check_model_uri, describe_version, load_model
    from leukotune.tuner.tracking.client import redact, resolve_tracking_uri

    check_model_uri(args.model)
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    try:
        model = load_model(args.model, tracking_uri)
    except MlflowException as exc:
        return _fail(f"MLflow at {redact(tracking_uri)}: {str(exc).strip().splitlines()[0][:300]}")
    version = describe_version(args.model, tracking_uri)
    _info(f"model {args.model}{f' = {version}' if version else ''}: {model.model_name}, "
          f"{model.preprocessing['image_size']} px {model.preprocessing['color']}")
    result = evaluate_folder(model, args.data, batch_size=args.batch_size, seed=args.seed)
    if args.json:
        print(json.dumps(json_safe({"model": args.model, "version": version, **result}), indent=2))
    else:
        print("\n".join(format_report(result)))
    return EXIT_OK if result["cells"] else EXIT_FAILED


def predict(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from leukotune.tuner.evaluation.logged_models import (
        check_model_uri,
        describe_version,
        load_model,
        stored_decision,
    )
    from leukotune.tuner.evaluation.predict import format_table, list_images, predict_files
    from leukotune.tuner.tracking.client import request_failure, resolve_tracking_uri

    check_model_uri(args.model)
    if args.address and not args.out:
        return _fail("--address runs batch prediction on Ray, which writes a results table: add --out results.csv "
                      "(or .parquet)")
    if args.part_size < 1 or args.batch_size < 1:
        return _fail("--part-size and --batch-size must be at least 1")
    output = None
    if args.out:
        from leukotune.tuner.evaluation.batch_output import BatchOutput
        output = BatchOutput.at(args.out)  # a bad name stops here, before the model or Ray
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    files = list_images(args.paths)
    if not files:
        return _fail(f"no images (.bmp .png .jpg .jpeg .tif .tiff) under {' '.join(args.paths)}")
    try:
        model = load_model(args.model, tracking_uri)
    except MlflowException as exc:
        return _fail(request_failure(exc, tracking_uri))
    version = describe_version(args.model, tracking_uri)
    _info(f"model {args.model}{f' = {version}' if version else ''}: {model.model_name}, "
          f"{model.preprocessing['image_size']} px {model.preprocessing['color']}"
          f"{', TTA over 4 rotations' if args.tta else ''}")
    decision = stored_decision(args.model, tracking_uri)  # the same tags load_model put into the model
    _info(decision.line())
    if output is not None:  # on Ray Data, resumable (tuner/evaluation/batch_predict.py)
        from leukotune.tuner.evaluation.batch_predict import model_label, plan_batch, predict_on_ray

        label = model_label(args.model, version, args.tta)
        summary, unreadable = predict_on_ray(model, label, plan_batch(files, output, label), output,
                                             address=args.address, tta=args.tta, batch_size=args.batch_size,
                                             part_size=args.part_size, log=_info)
        return _report_batch(args, version, summary, unreadable)
    rows = predict_files(model, files, tta=args.tta, batch_size=args.batch_size)
    classified = sum(r.error is None for r in rows)
    if args.json:
        print(json.dumps({"model": args.model, "version": version, "tta": args.tta, "calibration": decision.to_json(),
                          "classified": classified, "errors": len(rows) - classified,
                          "predictions": [r.to_dict() for r in rows]}, indent=2))
    else:
        print("\n".join(format_table(rows)))
        _info(f"{classified} classified, {len(rows) - classified} unreadable")
    return EXIT_OK if classified else EXIT_FAILED


def _report_batch(args: argparse.Namespace, version: str | None, summary, unreadable: list[dict]) -> int:
    """The end of `predict --out`: the unreadable files and the summary, or one JSON object."""
    if args.json:
        print(json.dumps({"model": args.model, "version": version, "tta": args.tta, **summary.to_json(),
                          "unreadable_files": [{"file": r["file"], "error": r["error"]} for r in unreadable]},
                         indent=2))
    else:
        print("\n".join(summary.lines(unreadable)))
    return EXIT_OK if summary.classified else EXIT_FAILED


# ---------------------------------------------------------------- pretrained weights

def weights_fetch(args: argparse.Namespace) -> int:
    from leukotune.models import WeightsDownloadError, default_weights_dir, fetch_imagenet_weights, imagenet_weights

    archs = args.archs or list(ARCHS)
    for arch in archs:
        imagenet_weights(arch)  # an unknown name stops here, listing the valid ones (exit 2)
    failed = 0
    for arch in archs:
        url = imagenet_weights(arch).url
        if args.mirror:
            url = f"{args.mirror.rstrip('/')}/{Path(url).name}"
        print(f"{arch}: {url}", flush=True)
        try:
            path, downloaded = fetch_imagenet_weights(arch, args.dir, url=url, progress=not args.no_progress)
        except WeightsDownloadError as exc:
            print(f"error: {arch}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{arch}: {'saved to' if downloaded else 'already there (hash checked):'} {path}")
    if args.dir and failed < len(archs) and args.dir.resolve() != default_weights_dir().resolve():
        print(f"studies look there when LEUKOTUNE_WEIGHTS_DIR={args.dir.resolve()} is set")
    return EXIT_FAILED if failed else EXIT_OK
