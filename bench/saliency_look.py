"""Saliency, looked at: train the smoke study's CNN on a folder of cells (the 60 real C-NMC cells in
../shared/cnmc-sample by default), draw Grad-CAM on its test side and run the model-randomisation check, and save
the two figures as PNG files to open.

    .venv/bin/python bench/saliency_look.py [--data DIR] [--out DIR] [--epochs 30] [--image-size 128]

Not a benchmark of speed: what the figures show is read by eye (docs/saliency.md says what was seen).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from leukotune.tuner.config import load_study
from leukotune.tuner.evaluation.inference import TrainedModel, probabilities
from leukotune.tuner.evaluation.saliency import saliency_report
from leukotune.tuner.tracking.saliency_figures import check_figure, maps_figure
from leukotune.tuner.train.checkpoints import BEST_FILE, read_checkpoint_file
from leukotune.tuner.train.data_source import prepare_study_data
from leukotune.tuner.train.loop import run_training
from leukotune.tuner.train.sessions import LocalSession

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "cnmc-sample"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SAMPLE),
                        help="a C-NMC-layout folder, or `synthetic` for the smoke study's stand-in "
                             "(default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / ".leukotune" / "saliency_look")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--conv-layers", type=int, default=4)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    source = [] if args.data == "synthetic" else [f"data.path={Path(args.data).resolve()}"]
    study = load_study(ROOT / "studies" / "smoke.yaml", [
        *source, f"train.epochs={args.epochs}", f"train.image_size={args.image_size}",
        f"train.conv_layers={args.conv_layers}", "train.batch_size=8", "data.test_fraction=0.3"])
    with tempfile.TemporaryDirectory() as keep:
        session = LocalSession(use_gpu="false", keep_dir=Path(keep))
        started = time.perf_counter()
        run_training(study, session, log=lambda _m: None)
        last = sorted(Path(keep).glob("epoch_*"))[-1]
        best = read_checkpoint_file(last, BEST_FILE)
    trained_s = time.perf_counter() - started

    data = prepare_study_data(study)
    model = TrainedModel.from_checkpoint(best)
    prob_all = probabilities(model, data.images, data.test_idx)
    labels = data.labels[data.test_idx]
    started = time.perf_counter()
    report = saliency_report(model, data.images, labels, prob_all, data.test_idx)
    saliency_s = time.perf_counter() - started

    check_figure(report).savefig(args.out / "randomisation_check.png")
    if report.passed:
        maps_figure(report).savefig(args.out / "gradcam_cells.png")
    summary = {"best_epoch": best["epoch"], "test_cells": len(labels),
               "test_accuracy": float(((prob_all >= model.threshold) == labels).mean()),
               "train_seconds": round(trained_s, 1), "saliency_seconds": round(saliency_s, 1), **report.summary()}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"figures in {args.out}")


if __name__ == "__main__":
    main()
