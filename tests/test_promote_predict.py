"""`leukotune promote` and `predict` against a real MLflow (SQLite) holding trial runs logged as a study logs them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from leukotune.data import read_image
from leukotune.models import get_model
from leukotune.tuner.cli.main import main
from leukotune.tuner.evaluation import logged_models
from leukotune.tuner.evaluation.inference import probabilities
from leukotune.tuner.evaluation.predict import predict_files
from leukotune.tuner.registry.promote import Candidate, rank, threshold_problem
from leukotune.tuner.tracking.artifacts import log_pytorch_model
from leukotune.tuner.tracking.client import PARENT_TAG, TAG_FINGERPRINT, TAG_KIND, TAG_MODEL_URI, Tracker

EXPERIMENT = "promote-test"
FINGERPRINT = "data-fp-1234"


def _candidate(run_id: str, value: float, start: int) -> Candidate:
    return Candidate(run_id, run_id, value, start, f"runs:/{run_id}/model")


# ---------------------------------------------------------------- pure

def test_rank_breaks_ties_by_start_time_then_run_id():
    runs = [_candidate("b", 0.9, 20), _candidate("c", 0.9, 10), _candidate("a", 0.9, 10), _candidate("d", 0.5, 1)]
    assert [c.run_id for c in rank(runs, "max")] == ["a", "c", "b", "d"]
    assert [c.run_id for c in rank(runs, "min")][0] == "d"


@pytest.mark.parametrize("value, minimum, maximum, refused", [
    (0.9, None, None, False), (0.9, 0.9, None, False), (0.89, 0.9, None, True),
    (0.2, None, 0.3, False), (0.4, None, 0.3, True),
])
def test_threshold_problem(value, minimum, maximum, refused):
    assert (threshold_problem(value, "m", minimum, maximum) is not None) == refused


@pytest.mark.parametrize("uri", ["/tmp/model", "file:///tmp/model", "s3://bucket/model", "model.pt"])
def test_predict_refuses_models_from_outside_the_tracking_server(uri, capsys):
    assert main(["predict", "--model", uri, "x.bmp"]) == 2
    assert "give a model from the tracking server" in capsys.readouterr().err


# ---------------------------------------------------------------- a registry with trial runs

def _log_trial(tracker: Tracker, parent_id: str, name: str, f1_per_epoch: list[float], start_ms: int,
               color: str = "rgb", status: str = "FINISHED", with_model: bool = True, seed: int = 0) -> str:
    """One trial run as the study writes it: per-epoch metrics, best_epoch.json, the model, then its end state."""
    run = tracker.client.create_run(tracker.experiment_id, start_time=start_ms, run_name=name,
                                    tags={PARENT_TAG: parent_id, TAG_KIND: "trial", "leukotune.trial_id": name})
    run_id = run.info.run_id
    for epoch, value in enumerate(f1_per_epoch, 1):
        tracker.log_metrics(run_id, {"best_val_f1_weighted": value, "val_accuracy": value - 0.05}, step=epoch)
    # The study's test evaluation of its top trials (promote gates on it): below validation, with its interval.
    best_val = max(f1_per_epoch)
    tracker.log_metrics(run_id, {"test_f1_weighted": best_val - 0.1, "test_f1_weighted_ci95_low": best_val - 0.2,
                                 "test_f1_weighted_ci95_high": best_val - 0.05}, step=0)
    if with_model:
        torch.manual_seed(seed)
        channels = 1 if color == "gray" else 3
        kwargs = {"conv_layers": 2, "base_filters": 4, "dense": 16, "image_size": 64, "in_channels": channels}
        network = get_model("cnn", **kwargs)
        prep = {"image_size": 64, "color": color, "mean": [0.6] * channels, "std": [0.2] * channels}
        best = {"model": network.state_dict(), "model_name": "cnn", "model_kwargs": kwargs, "preprocessing": prep,
                "epoch": len(f1_per_epoch), "metrics": {"val_f1_weighted": max(f1_per_epoch)}}
        tracker.log_json(run_id, {"best_epoch": best["epoch"], "metrics": {"val_f1_weighted": max(f1_per_epoch),
                                                                          "val_roc_auc": 0.5}}, "best_epoch.json")
        tracker.set_tags(run_id, {TAG_MODEL_URI: log_pytorch_model(tracker, run_id, best)})
    tracker.end_run(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracker = Tracker(uri, EXPERIMENT, log=lambda _msg: None)
    parent = tracker.create_run("study", {TAG_KIND: "study", TAG_FINGERPRINT: FINGERPRINT})
    t0 = 1_700_000_000_000
    runs = {
        "gray": _log_trial(tracker, parent, "trial-gray", [0.5, 0.8], t0, color="gray", seed=1),
        # B and C tie at 0.9 (their latest value); C started first, so C wins
        "late_tie": _log_trial(tracker, parent, "trial-b", [0.7, 0.9], t0 + 2000, seed=2),
        "early_tie": _log_trial(tracker, parent, "trial-c", [0.9, 0.9], t0 + 1000, seed=3),
        # better values, but not eligible: failed, or no model logged
        "failed": _log_trial(tracker, parent, "trial-failed", [0.99], t0, status="FAILED", with_model=False),
        "no_model": _log_trial(tracker, parent, "trial-nomodel", [0.97], t0, with_model=False),
    }
    tracker.end_run(parent, "FINISHED")
    return {"uri": uri, "runs": runs, "client": MlflowClient(tracking_uri=uri, registry_uri=uri)}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _promote(registry, *extra: str) -> int:
    return main(["promote", "--experiment", EXPERIMENT, "--tracking-uri", registry["uri"], *extra])


def test_promote_registers_the_best_finished_trial_and_sets_the_alias(registry, capsys):
    assert _promote(registry, "--model-name", "m-best") == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "models:/m-best@champion"
    client = registry["client"]
    version = client.get_model_version_by_alias("m-best", "champion")
    assert version.run_id == registry["runs"]["early_tie"]
    logged_uri = client.get_run(version.run_id).data.tags[TAG_MODEL_URI]
    assert logged_uri.startswith("models:/m-") and version.source == logged_uri  # registered from the LoggedModel
    assert version.tags[TAG_FINGERPRINT] == FINGERPRINT  # from the parent study run
    assert version.tags["leukotune.metric"] == "best_val_f1_weighted"
    assert float(version.tags["leukotune.metric_value"]) == pytest.approx(0.9)
    assert float(version.tags["metric.val_roc_auc"]) == pytest.approx(0.5)  # best epoch's metrics
    assert version.current_stage in (None, "None")  # aliases, never the deprecated stages


def test_promoting_the_same_run_twice_creates_no_second_version(registry, capsys):
    assert _promote(registry, "--model-name", "m-twice") == 0
    assert _promote(registry, "--model-name", "m-twice", "--alias", "staging") == 0
    assert "already registered as version 1" in capsys.readouterr().out
    versions = registry["client"].search_model_versions("name = 'm-twice'")
    assert len(versions) == 1
    aliases = registry["client"].get_registered_model("m-twice").aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": "1", "staging": "1"}


def test_promote_below_min_refuses_with_exit_1_and_registers_nothing(registry, capsys):
    assert _promote(registry, "--model-name", "m-refused", "--min", "0.95") == 1
    err = capsys.readouterr().err
    assert "not promoted" in err and "below --min 0.95" in err
    assert registry["client"].search_registered_models("name = 'm-refused'") == []


def test_promote_json_and_default_model_name(registry, capsys):
    assert _promote(registry, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model_uri"] == f"models:/leukotune-{EXPERIMENT}@champion"
    assert result["run_id"] == registry["runs"]["early_tie"] and result["value"] == pytest.approx(0.9)


def test_promote_unknown_experiment_is_a_one_line_error(registry, capsys):
    assert main(["promote", "--experiment", "nope", "--tracking-uri", registry["uri"]]) == 2
    assert "no experiment named 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------- predict

@pytest.fixture(scope="module")
def champion(registry) -> str:
    assert main(["promote", "--experiment", EXPERIMENT, "--tracking-uri", registry["uri"],
                 "--model-name", "m-predict"]) == 0
    return "models:/m-predict@champion"


@pytest.fixture
def images(synthetic_dataset, tmp_path) -> Path:
    """Synthetic cells under nested folders, a corrupt .bmp and a text file that is not an image."""
    folder = tmp_path / "cells"
    shutil.copytree(synthetic_dataset / "training_data", folder / "training_data")
    (folder / "training_data" / "corrupt.bmp").write_bytes(b"BM not really a bitmap")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return folder


def test_predict_classifies_every_image_and_reports_the_corrupt_one(registry, champion, images, capsys):
    code = main(["predict", "--model", champion, str(images), "--json", "--tracking-uri", registry["uri"]])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["predictions"]
    cells = len(list(images.rglob("*.bmp"))) - 1
    assert cells > 0 and len(rows) == cells + 1 and result["classified"] == cells and result["errors"] == 1
    bad = [r for r in rows if "error" in r]
    assert bad[0]["file"].endswith("corrupt.bmp")
    good = [r for r in rows if "error" not in r]
    assert {r["class"] for r in good} <= {"all", "hem"}
    assert all(0.0 <= r["p_all"] <= 1.0 and (r["class"] == "all") == (r["p_all"] >= 0.5) for r in good)
    assert result["version"].startswith("version ")


def test_predict_table_output_and_tta(registry, champion, synthetic_dataset, capsys):
    files = sorted((synthetic_dataset / "training_data").rglob("*.bmp"))[:3]
    assert main(["predict", "--model", champion, *map(str, files), "--tta", "--tracking-uri", registry["uri"]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["file", "class", "p_all"] and len(out) == 4


def test_tta_is_the_mean_over_the_four_rotations(registry, champion, synthetic_dataset):
    model = logged_models.load_model(champion, registry["uri"])
    files = [(p, None) for p in sorted((synthetic_dataset / "training_data").rglob("*.bmp"))[:4]]
    plain = predict_files(model, files, tta=False)
    tta = predict_files(model, files, tta=True, batch_size=3)  # batches must not change results
    prep = model.preprocessing
    images = np.stack([read_image(p, prep["image_size"], prep["color"]) for p, _ in files])
    rotated = [np.ascontiguousarray(np.rot90(images, k, axes=(-2, -1))) for k in range(4)]
    expected = np.mean([probabilities(model, view) for view in rotated], axis=0)
    assert [r.p_all for r in tta] == pytest.approx(expected.tolist(), abs=1e-5)
    assert [r.p_all for r in plain] == pytest.approx(probabilities(model, images).tolist(), abs=1e-5)
    assert [r.p_all for r in plain] != pytest.approx([r.p_all for r in tta], abs=1e-9)


def test_preprocessing_comes_from_the_model_and_weights_load_without_unpickling(registry, synthetic_dataset,
                                                                               monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(logged_models.torch, "load", spy)
    gray_uri = registry["client"].get_run(registry["runs"]["gray"]).data.tags[TAG_MODEL_URI]  # models:/<model_id>
    gray = logged_models.load_model(gray_uri, registry["uri"])
    assert calls == [True]
    assert gray.preprocessing["color"] == "gray" and gray.preprocessing["mean"] == [0.6]
    rows = predict_files(gray, [(next((synthetic_dataset / "training_data").rglob("*.bmp")), None)])
    assert rows[0].error is None  # a 1-channel network fed 1-channel input, decided by the metadata alone


def test_predict_with_nothing_readable_exits_1(registry, champion, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG broken")
    missing = tmp_path / "missing.bmp"
    assert main(["predict", "--model", champion, str(broken), str(missing), "--tracking-uri", registry["uri"]]) == 1
    out = capsys.readouterr().out
    assert "broken.png" in out and "no such file or folder" in out


def test_predict_unknown_alias_is_a_one_line_error(registry, capsys):
    assert main(["predict", "--model", "models:/m-predict@nope", "x.bmp", "--tracking-uri", registry["uri"]]) == 2
    assert "could not be fetched" in capsys.readouterr().err
