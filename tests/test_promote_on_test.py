"""`leukotune promote` ranks by validation but judges on test: the gate, the refusal of an untested candidate,
the test tags and the model card. Real MLflow on SQLite, runs logged as a study logs them."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from test_promote_predict import _log_trial

from leukotune.tuner.cli.main import main
from leukotune.tuner.tracking.client import TAG_FINGERPRINT, TAG_KIND, Tracker

EXPERIMENT = "promote-on-test"


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> dict:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    tracker = Tracker(uri, EXPERIMENT, log=lambda _msg: None)
    parent = tracker.create_run("study", {TAG_KIND: "study", TAG_FINGERPRINT: "fp-honest"})
    tracker.log_json(parent, {"train": ["1", "H1"], "val": ["2", "H2"], "test": ["3", "H3"]}, "data/split.json")
    tracker.log_params(parent, {"data.split_method": "subject", "data.test_source": "subjects",
                                "data.test_all_cells": 12, "data.test_hem_cells": 9})
    best = _log_trial(tracker, parent, "trial-best", [0.7, 0.9], 1_700_000_000_000, seed=1)  # test 0.8
    tracker.end_run(parent, "FINISHED")
    return {"uri": uri, "tracker": tracker, "parent": parent, "best": best,
            "client": MlflowClient(tracking_uri=uri, registry_uri=uri)}


def _promote(registry, *extra: str) -> int:
    return main(["promote", "--experiment", EXPERIMENT, "--tracking-uri", registry["uri"], *extra])


def test_min_gates_on_the_test_score_even_when_validation_clears_it(registry, capsys):
    # Validation 0.9 clears 0.85; the test score 0.8 does not: refused, nothing registered.
    assert _promote(registry, "--model-name", "gate", "--min", "0.85") == 1
    err = capsys.readouterr().err
    assert "test_f1_weighted is 0.8000, below --min 0.85" in err and "best_val_f1_weighted is 0.9000" in err
    assert registry["client"].search_registered_models("name = 'gate'") == []
    # Judged on validation by choice, the same bar passes.
    assert _promote(registry, "--model-name", "gate", "--min", "0.85", "--gate-metric", "best_val_f1_weighted") == 0


def test_promoted_version_carries_test_tags_and_a_model_card(registry, capsys):
    assert _promote(registry, "--model-name", "carded", "--min", "0.75") == 0
    assert "judged on test_f1_weighted = 0.8000" in capsys.readouterr().out
    client = registry["client"]
    version = client.get_model_version_by_alias("carded", "champion")
    assert float(version.tags["test.f1_weighted"]) == pytest.approx(0.8)
    assert float(version.tags["test.f1_weighted_ci95_low"]) == pytest.approx(0.7)
    card = version.description
    for text in ("fp-honest", "split `subject`", "- test: 12 ALL, 9 hem cells; 2 subjects (3, H3)",
                 "| f1_weighted | 0.9000 | 0.8000 | 0.7000 - 0.8500 |", "Research use only",
                 "not a patient-level diagnosis", "trial `trial-best`"):
        assert text in card, text
    artifacts = {a.path for a in client.list_artifacts(registry["best"])}
    assert "model_card.md" in artifacts


def test_a_best_candidate_without_test_metrics_is_refused(registry, capsys):
    tracker = registry["tracker"]
    # Better on validation than anything so far, but never evaluated on the test side.
    untested = _log_trial(tracker, registry["parent"], "trial-untested", [0.95], 1_700_000_000_500, seed=2)
    for key in ("test_f1_weighted", "test_f1_weighted_ci95_low", "test_f1_weighted_ci95_high"):
        tracker.log_metrics(untested, {key: float("nan")}, step=1)  # NaN: the latest value is no test score
    assert _promote(registry, "--model-name", "untested") == 1
    err = capsys.readouterr().err
    assert "trial-untested" in err and "has no test_f1_weighted" in err and "not evaluated on the test side" in err
