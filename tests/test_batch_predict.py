"""`leukotune predict --out`: batch prediction on Ray Data, written part by part, resumed after a kill.

The fast tests read and write the results table (batch_output.py) and plan what a rerun predicts; the slow ones run
the command as a user would on the real C-NMC sample with a tiny registered, calibrated model: killed once after its
first parts, then resumed, and compared with the one-process path.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import REPO_ROOT, require_cnmc_sample
from leukotune.models import get_model
from leukotune.tuner.cli.main import main
from leukotune.tuner.evaluation.batch_output import BatchOutput, BatchOutputError, read_rows, write_rows
from leukotune.tuner.evaluation.batch_predict import model_label, plan_batch
from leukotune.tuner.evaluation.calibration import TAG_CALIBRATION, TAG_TEMPERATURE, TAG_THRESHOLD
from leukotune.tuner.registry.model_uris import process_tracking_uri
from leukotune.tuner.serving.calibrated_copy import log_calibrated_copy
from leukotune.tuner.tracking.artifacts import log_pytorch_model
from leukotune.tuner.tracking.client import Tracker

MODEL = "m version 1 (run r)"


def _row(file: str, label: str | None = "all", p: float | None = 0.75, error: str | None = None,
         model: str = MODEL) -> dict:
    return {"file": file, "class": label, "p_all": p, "error": error, "model": model}


# ---------------------------------------------------------------- the results table, no Ray

@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_rows_round_trip_exactly(tmp_path, suffix):
    rows = [_row("/a.bmp", p=0.1 + 0.2), _row("/b.bmp", "hem", 1e-9), _row("/c.bmp", None, None, "ImageError: x")]
    fmt = "csv" if suffix == ".csv" else "parquet"
    write_rows(tmp_path / f"r{suffix}", rows, fmt)
    assert read_rows(tmp_path / f"r{suffix}", fmt) == rows
    assert [p.name for p in tmp_path.iterdir()] == [f"r{suffix}"]  # the temporary file was renamed


def test_merge_keeps_one_row_per_file_the_newest_and_ignores_half_written_parts(tmp_path):
    output = BatchOutput.at(tmp_path / "results.csv")
    write_rows(output.path, [_row("/a.bmp"), _row("/b.bmp", None, None, "truncated")], "csv")
    output.write_part(1, [_row("/b.bmp", "hem", 0.2)])  # /b.bmp read this time
    output.write_part(2, [_row("/c.bmp")])
    (output.parts / ".part-000003.csv.tmp").write_text("file,class\n/half")  # a kill mid-write
    assert output.next_part_number() == 3
    rows = output.merge(MODEL)
    assert [(r["file"], r["class"]) for r in rows] == [("/a.bmp", "all"), ("/b.bmp", "hem"), ("/c.bmp", "all")]
    assert not output.parts.exists() and read_rows(output.path, "csv") == rows


def test_a_rerun_skips_classified_files_and_retries_unreadable_ones(tmp_path):
    output = BatchOutput.at(tmp_path / "results.parquet")
    a, b, c = (str(tmp_path / name) for name in ("a.bmp", "b.bmp", "c.bmp"))
    output.write_part(1, [_row(a), _row(b, None, None, "truncated")])
    plan = plan_batch([(Path(a), None), (Path(b), None), (Path(c), None), (tmp_path / "gone.bmp", "no such file")],
                      output, MODEL)
    assert plan.todo == [b, c] and plan.already == 1
    assert [r["file"] for r in plan.missing] == [str(tmp_path / "gone.bmp")]


def test_another_models_rows_are_refused(tmp_path):
    output = BatchOutput.at(tmp_path / "results.csv")
    output.write_part(1, [_row("/a.bmp")])
    with pytest.raises(BatchOutputError, match="holds predictions of 'm version 1"):
        output.read_done("m version 2 (run s)")


@pytest.mark.parametrize("name, says", [("results.txt", ".csv or .parquet"), ("missing/results.csv", "does not exist")])
def test_unusable_out_names_are_refused(tmp_path, name, says):
    with pytest.raises(BatchOutputError, match=says):
        BatchOutput.at(tmp_path / name)


def test_a_table_of_another_shape_is_refused(tmp_path):
    (tmp_path / "results.csv").write_text("name,score\nx,1\n")
    with pytest.raises(BatchOutputError, match="no column file"):
        BatchOutput.at(tmp_path / "results.csv").read_done(MODEL)


def test_model_label_names_the_version_whatever_alias_led_there():
    assert model_label("models:/m@champion", "version 3 (run r)", False) == "m version 3 (run r)"
    assert model_label("models:/m/3", "version 3 (run r)", True) == "m version 3 (run r) + TTA"
    assert model_label("models:/m-abc", "logged model m-abc (run r)", False) == "logged model m-abc (run r)"
    assert model_label("runs:/r/model", None, False) == "runs:/r/model"


def test_address_without_out_is_refused_before_anything_starts(capsys):
    assert main(["predict", "--model", "models:/m@champion", "x.bmp", "--address", "127.0.0.1:6379"]) == 2
    assert "add --out" in capsys.readouterr().err


# ---------------------------------------------------------------- on Ray, killed and resumed

COPIES = 10  # the 60 real cells, hard-linked 10 times: 600 files, no disk
PART_SIZE = 10


@pytest.fixture(scope="module")
def champion(tmp_path_factory) -> dict:
    """A tiny CNN logged as the study logs it, registered with a calibration and threshold as `promote` stores
    them (version tags, and a copy of the model carrying them), aliased champion: no study trained."""
    folder = tmp_path_factory.mktemp("batch-mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracker = Tracker(uri, "batch-predict", log=lambda _msg: None)
    run_id = tracker.create_run("trial", {})
    torch.manual_seed(0)
    kwargs = {"conv_layers": 2, "base_filters": 4, "dense": 16, "image_size": 64, "in_channels": 3}
    best = {"model": get_model("cnn", **kwargs).state_dict(), "model_name": "cnn", "model_kwargs": kwargs,
            "preprocessing": {"image_size": 64, "color": "rgb", "mean": [0.6] * 3, "std": [0.2] * 3}, "epoch": 1,
            "metrics": {}}
    logged = log_pytorch_model(tracker, run_id, best)
    tracker.end_run(run_id, "FINISHED")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("tiny")
    # As promote registers a calibrated point: a copy carrying it, so that a server of the version answers alike.
    calibrated = log_calibrated_copy(uri, logged, 1.6, 0.52)
    with process_tracking_uri(uri):  # the SQLite registry looks the LoggedModel up through the process's URI
        version = client.create_model_version("tiny", calibrated, run_id=run_id).version
    for key, value in {TAG_TEMPERATURE: "1.6", TAG_THRESHOLD: "0.52", TAG_CALIBRATION: "validation"}.items():
        client.set_model_version_tag("tiny", version, key, value)
    client.set_registered_model_alias("tiny", "champion", version)
    return {"uri": uri, "model": "models:/tiny@champion"}


def _command(champion: dict, out: Path, *paths: Path) -> list[str]:
    return [sys.executable, "-m", "leukotune.tuner.cli", "predict", "--model", champion["model"], "--tracking-uri",
            champion["uri"], "--out", str(out), "--part-size", str(PART_SIZE), *map(str, paths)]


def _wait_for(condition, deadline_s: float, what: str) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {deadline_s:.0f} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def resumed(champion, tmp_path_factory) -> dict:
    """The command killed (SIGKILL) as soon as its first part file exists, then run again on the same output."""
    sample = require_cnmc_sample()
    work = tmp_path_factory.mktemp("batch-predict")
    cells = work / "cells"
    for copy in range(COPIES):
        for source in sorted((sample / "training_data").rglob("*.bmp")):
            target = cells / f"copy{copy:02d}" / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, target)
    corrupt = work / "corrupt.bmp"
    corrupt.write_bytes(b"BM not really a bitmap")
    out = work / "results.parquet"
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    first = subprocess.Popen(_command(champion, out, cells, corrupt), cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    parts = out.with_name(out.name + ".parts")
    try:
        _wait_for(lambda: any(parts.glob("part-*.parquet")) or first.poll() is not None, 600, "the first part file")
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first_out, first_err = first.communicate(timeout=60)
    written = [row for part in sorted(parts.glob("part-*.parquet")) for row in pq.read_table(part).to_pylist()]
    second = subprocess.run(_command(champion, out, cells, corrupt), cwd=work, env=env, capture_output=True,
                            text=True, timeout=900)
    return {"cells": cells, "corrupt": corrupt, "out": out, "written_before": written, "first_rc": first.returncode,
            "first_err": first_err, "second": second}


@pytest.mark.slow
def test_a_killed_run_resumes_with_every_image_exactly_once(resumed):
    second = resumed["second"]
    assert resumed["first_rc"] == -signal.SIGKILL, f"the first run ended before it was killed: " \
                                                   f"{resumed['first_err'][-2000:]}"
    before = resumed["written_before"]
    total = 60 * COPIES
    assert 0 < len(before) < total + 1, "the kill should land between the first part and the end"
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    rows = pq.read_table(resumed["out"]).to_pylist()
    files = [row["file"] for row in rows]
    expected = {str(p) for p in resumed["cells"].rglob("*.bmp")} | {str(resumed["corrupt"])}
    assert len(files) == len(set(files)) and set(files) == expected  # none lost, none twice
    assert not resumed["out"].with_name("results.parquet.parts").exists()
    classified_before = sum(row["class"] is not None for row in before)
    assert f"{classified_before} already in the output were not predicted again" in second.stdout
    assert f"{total + 1} images, {total} classified" in second.stdout
    # the same cell under 10 names, in different parts and runs: one probability
    by_name: dict[str, set[float]] = {}
    for row in rows:
        if row["class"] is not None:
            by_name.setdefault(Path(row["file"]).name, set()).add(round(row["p_all"], 6))
    assert all(len(values) == 1 for values in by_name.values()) and len(by_name) == 60


@pytest.mark.slow
def test_batch_results_are_the_one_process_results_and_the_corrupt_file_is_listed(resumed, champion, capsys):
    sample = require_cnmc_sample()
    assert main(["predict", "--model", champion["model"], "--tracking-uri", champion["uri"], "--json",
                 str(sample / "training_data")]) == 0
    one_process = {Path(r["file"]).name: r for r in json.loads(capsys.readouterr().out)["predictions"]}
    batch = {row["file"]: row for row in pq.read_table(resumed["out"]).to_pylist()}
    assert all(row["model"].startswith("tiny version 1 (run ") for row in batch.values())
    for name, expected in one_process.items():
        row = batch[str(resumed["cells"] / "copy07" / name)]
        assert row["class"] == expected["class"] and row["p_all"] == pytest.approx(expected["p_all"], abs=1e-5)
    # the version's stored threshold (0.52, not 0.5) made the call
    assert all((r["class"] == "all") == (r["p_all"] >= 0.52) for r in one_process.values())
    corrupt = batch[str(resumed["corrupt"])]
    assert corrupt["class"] is None and corrupt["error"].startswith("ImageError")
    second = resumed["second"]
    assert f"unreadable: {resumed['corrupt']}: ImageError" in second.stdout
    # a clean console: the command's own lines, none of Ray's, Ray Data's or MLflow's
    noise = [line for line in (second.stderr + resumed["first_err"]).splitlines()
             if any(word in line for word in ("WARNING", "INFO", "core_worker", "Traceback", "Deprecat"))]
    assert noise == []
