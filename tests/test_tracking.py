"""Tracking helpers against a real MLflow (SQLite): redaction, retries, reachability."""
from __future__ import annotations

import socket

import pytest
from mlflow.exceptions import MlflowException

from leukotune.tuner.tracking.client import Tracker, TrackingUnavailable, check_reachable, redact, with_retries


@pytest.mark.parametrize("text, expected", [
    ("http://alice:s3cret@mlflow:5000", "http://alice:***@mlflow:5000"),
    ("postgresql://u:p%40ss@db/mlflow", "postgresql://u:***@db/mlflow"),
    ("http://mlflow:5000", "http://mlflow:5000"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("uri http://a:b@h and http://c:d@k", "uri http://a:***@h and http://c:***@k"),
])
def test_redact_hides_passwords_in_uris(text, expected):
    assert redact(text) == expected


def test_logged_params_never_carry_credentials(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}", "redaction", log=lambda _m: None)
    run_id = tracker.create_run("r", {})
    tracker.log_params(run_id, {"tracking": {"tracking_uri": "https://bob:hunter2@mlflow.example:443"}})
    params = tracker.client.get_run(run_id).data.params
    assert params["tracking.tracking_uri"] == "https://bob:***@mlflow.example:443"
    assert "hunter2" not in str(params)


def test_with_retries_rides_out_transient_failures_and_gives_up_after_the_last():
    calls, messages = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("server restarting")
        return "logged"

    assert with_retries(flaky, "log metrics", first_delay_s=0.01, log=messages.append) == "logged"
    assert len(calls) == 3 and len(messages) == 2 and "retry 1" in messages[0]

    def broken():
        raise MlflowException("down for good")

    with pytest.raises(MlflowException):
        with_retries(broken, "log metrics", attempts=3, first_delay_s=0.01, log=messages.append)


def test_unreachable_server_is_reported_with_the_redacted_uri():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TrackingUnavailable) as info:
        check_reachable(f"http://carol:pw@127.0.0.1:{port}", timeout_s=2)
    assert "carol:***@127.0.0.1" in str(info.value) and "pw@" not in str(info.value)
