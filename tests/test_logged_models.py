"""Trial models as MLflow 3 LoggedModels, for the study's top `tracking.log_models` trials only.

Real MLflow on SQLite throughout; the slow test runs a real study (Ray, Optuna) and then promote and predict.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import torch
import yaml
from mlflow.entities import LoggedModelStatus

from leukotune.models import get_model
from leukotune.tuner.cli.main import main
from leukotune.tuner.config import ConfigError, apply_overrides, build_study
from leukotune.tuner.metrics import ranking_key
from leukotune.tuner.registry.model_uris import logged_model_id, process_tracking_uri
from leukotune.tuner.tracking.artifacts import MODEL_TYPE, log_pytorch_model
from leukotune.tuner.tracking.client import TAG_MODEL_URI, Tracker
from leukotune.tuner.tracking.trial_runs import top_trials

from conftest import SMOKE, TINY, local_uri, sets, study_runs
from conftest import run_leukotune as run_cli

METRIC = "val_f1_weighted"


# ---------------------------------------------------------------- the setting

@pytest.mark.parametrize("given, kept", [("0", 0), ("3", 3), ("all", "all"), ("false", 0), ("12", 12)])
def test_log_models_accepts_a_count_or_all(given, kept):
    assert build_study(apply_overrides({}, [f"tracking.log_models={given}"])).tracking.log_models == kept


def test_log_models_defaults_to_the_top_three():
    assert build_study({}).tracking.log_models == 3


@pytest.mark.parametrize("given, says", [("true", "say all"), ("-1", ">= 0"), ("two", "or all"), ("2.5", "or all")])
def test_log_models_refuses_other_values_in_one_line(given, says):
    with pytest.raises(ConfigError) as raised:
        build_study(apply_overrides({}, [f"tracking.log_models={given}"]))
    message = str(raised.value)
    assert message.startswith("tracking.log_models=") and says in message and "\n" not in message


@pytest.mark.parametrize("uri, model_id", [
    ("models:/m-0123abc", "m-0123abc"), ("models:/name@champion", None), ("models:/name/3", None),
    ("runs:/abc/model", None), ("models:/", None),
])
def test_logged_model_id(uri, model_id):
    assert logged_model_id(uri) == model_id


# ---------------------------------------------------------------- which trials keep a model

def _trial(trial_id: str, best: float | None, status: str = "TERMINATED") -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, status=status, last_result={f"best_{METRIC}": best})


TRIALS = [_trial("a", 0.5), _trial("b", 0.9), _trial("c", 0.7), _trial("d", 0.9), _trial("e", float("nan")),
          _trial("f", 0.99, status="ERROR"), _trial("g", None)]


@pytest.mark.parametrize("mode, keep, expected", [
    ("max", 2, ["b", "d"]),          # a tie goes to the smaller trial id, as on the leaderboard
    ("max", 3, ["b", "d", "c"]),
    ("min", 1, ["a"]),
    ("max", 0, []),
    ("max", "all", ["b", "d", "c", "a"]),  # never a failed trial, nor one without a finite value
])
def test_top_trials(mode, keep, expected):
    assert [t.trial_id for t in top_trials(TRIALS, METRIC, mode, keep)] == expected


# ---------------------------------------------------------------- one LoggedModel

def test_a_logged_model_has_its_run_metrics_signature_and_a_plain_state_dict(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "logged-model", log=lambda _msg: None)
    run_id = tracker.create_run("trial-x", {})
    for epoch, value in enumerate([0.4, 0.8, 0.6], 1):
        tracker.log_metrics(run_id, {METRIC: value, "val_loss": 1.0 - value}, step=epoch)
    kwargs = {"conv_layers": 2, "base_filters": 4, "dense": 8, "image_size": 64, "in_channels": 3}
    network = get_model("cnn", **kwargs)
    best = {"model": network.state_dict(), "model_name": "cnn", "model_kwargs": kwargs, "epoch": 2,
            "preprocessing": {"image_size": 64, "color": "rgb", "mean": [0.5] * 3, "std": [0.2] * 3},
            "metrics": {"epoch": 2, METRIC: 0.8, "val_loss": 0.2}}
    model_uri = log_pytorch_model(tracker, run_id, best, "trial-x", {"leukotune.trial_id": "x"})
    tracker.end_run(run_id, "FINISHED")

    with process_tracking_uri(uri):
        found = mlflow.search_logged_models(experiment_ids=[tracker.experiment_id], output_format="list")
    assert [f"models:/{m.model_id}" for m in found] == [model_uri]
    model = found[0]
    assert (model.source_run_id, model.name, model.status, model.model_type) == (
        run_id, "trial-x", LoggedModelStatus.READY, MODEL_TYPE)
    assert model.tags["leukotune.trial_id"] == "x" and model.params["model_name"] == "cnn"
    assert {(m.key, m.value, m.step) for m in model.metrics} == {(METRIC, 0.8, 2), ("val_loss", 1.0 - 0.8, 2)}
    run = tracker.client.get_run(run_id)
    assert [(o.model_id, o.step) for o in run.outputs.model_outputs] == [(model.model_id, 2)]
    assert run.data.metrics[METRIC] == 0.6  # linking the best epoch leaves the latest value alone
    history = tracker.client.get_metric_history(run_id, METRIC)
    assert [(m.step, m.value) for m in history] == [(1, 0.4), (2, 0.8), (3, 0.6)]  # and one value per epoch

    files = Path(mlflow.artifacts.download_artifacts(model.artifact_location, dst_path=str(tmp_path / "dl")))
    mlmodel = yaml.safe_load((files / "MLmodel").read_text())
    assert mlmodel["model_id"] == model.model_id and mlmodel["run_id"] == run_id
    # A pyfunc that takes cell images (tests/test_image_model.py), not tensors of the training size.
    assert json.loads(mlmodel["signature"]["inputs"]) == [{"type": "binary", "name": "image", "required": True}]
    state = torch.load(files / mlmodel["metadata"]["leukotune"]["state_dict"], weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in network.state_dict().items())


# ---------------------------------------------------------------- a study, then promote and predict

@pytest.mark.slow
def test_study_logs_models_for_its_top_trials_only_then_promote_and_predict_use_them(tmp_path, env, capsys):
    experiment, keep = "logged-models", 2
    result = run_cli(["tune", "--config", str(SMOKE), *sets(TINY + [
        "tune.num_samples=4", "train.epochs=2", f"tracking.log_models={keep}", f"tracking.experiment={experiment}"])],
        tmp_path, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"logging the models of the top {keep} trial(s)" in result.stdout

    uri = local_uri(tmp_path)
    client, _, children = study_runs(uri, experiment)
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    ranked = sorted(children, key=lambda c: (*ranking_key(c.data.metrics.get(f"best_{METRIC}"), "max"),
                                             c.data.tags["leukotune.trial_id"]))
    top = {c.info.run_id: c for c in ranked[:keep]}
    with process_tracking_uri(uri):
        models = mlflow.search_logged_models(experiment_ids=[children[0].info.experiment_id], output_format="list")
    assert sorted(m.source_run_id for m in models) == sorted(top)  # one per top trial, none for the others
    for model in models:
        run = top[model.source_run_id]
        assert model.status == LoggedModelStatus.READY
        assert run.data.tags[TAG_MODEL_URI] == f"models:/{model.model_id}"
        linked = {m.key: m.value for m in model.metrics}
        assert linked[METRIC] == pytest.approx(run.data.metrics[f"best_{METRIC}"])
    assert not any(TAG_MODEL_URI in c.data.tags for c in ranked[keep:])

    promoted = run_cli(["promote", "--experiment", experiment], tmp_path, env)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    champion = f"models:/leukotune-{experiment}@champion"
    assert promoted.stdout.strip().splitlines()[-1] == champion
    version = client.get_model_version_by_alias(f"leukotune-{experiment}", "champion")
    # The best value (promote breaks a tie by start time, the leaderboard by trial id), from its LoggedModel
    best_value = ranked[0].data.metrics[f"best_{METRIC}"]
    assert version.run_id in top and top[version.run_id].data.metrics[f"best_{METRIC}"] == best_value
    # Registered from the trial's LoggedModel, or (calibrated) from its copy with the operating point inside.
    trained = top[version.run_id].data.tags[TAG_MODEL_URI]
    assert version.tags["leukotune.trained_model"] == trained
    if version.source != trained:
        copied = client.get_logged_model(version.source.removeprefix("models:/"))
        assert copied.tags["leukotune.copied_from"] == trained.removeprefix("models:/")

    cells = next((tmp_path / "cache" / "synthetic").glob("*/"))  # the synthetic images the study trained on
    images = sorted(cells.rglob("*.bmp"))
    predicted = run_cli(["predict", "--model", champion, str(cells), "--json"], tmp_path, env)
    assert predicted.returncode == 0, predicted.stdout[-2000:] + predicted.stderr[-2000:]
    answer = json.loads(predicted.stdout)
    assert answer["classified"] == len(images) > 0 and answer["errors"] == 0
    # A LoggedModel by its id, never registered: in-process, which saves starting another Python.
    assert main(["predict", "--model", ranked[1].data.tags[TAG_MODEL_URI], str(images[0]), "--json",
                 "--tracking-uri", uri]) == 0
    assert json.loads(capsys.readouterr().out)["classified"] == 1
