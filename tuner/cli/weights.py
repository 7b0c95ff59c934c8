"""`leukotune weights fetch [ARCH...] [--dir DIR]`: torchvision's ImageNet files, downloaded once by a person.

A study never downloads (`train.weights: imagenet` finds the file on disk or stops at start); this command is how the
file gets there on a machine with internet.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from leukotune.tuner.cli.errors import EXIT_FAILED, EXIT_OK

# Listed here rather than read from leukotune.models: building the parser for `--help` should not import torch.
# tests/test_weights_fetch.py checks that this matches `imagenet_archs()`.
ARCHS = ("mobilenet_v2", "resnet50")


def add_weights(commands: argparse._SubParsersAction) -> None:
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
    fetch.set_defaults(handler=cmd_weights_fetch)


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    # Deferred: torch loads only when this command runs.
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
