"""A PostgreSQL tracking store without a database: URIs, passwords off command lines, libpq's failures in one line.

The same paths against a real PostgreSQL 15 (two studies at once, a wrong password, a server that does not answer)
run in `make e2e`: tests/e2e/test_postgres_store.py.
"""
from __future__ import annotations

import time

import pytest

from conftest import free_port
from leukotune.tuner.cluster.mlflow_server import describe, plan_server
from leukotune.tuner.tracking.client import TrackingUnavailable, check_reachable, redact
from leukotune.tuner.tracking.postgres import describe_failure, is_postgres, split_password


@pytest.mark.parametrize("uri, expected", [
    ("postgresql://mlflow:p%40ss@db:5432/mlflow", ("postgresql://mlflow@db:5432/mlflow", "p@ss")),
    ("postgresql+psycopg://mlflow:s3cret@db/mlflow?sslmode=require",
     ("postgresql+psycopg://mlflow@db/mlflow?sslmode=require", "s3cret")),
    ("postgresql://mlflow@db/mlflow?password=a%26b+c&sslmode=require",
     ("postgresql://mlflow@db/mlflow?sslmode=require", "a&b c")),  # decoded as SQLAlchemy decodes a query value
    ("postgresql://u:pw@[::1]:5432/db", ("postgresql://u@[::1]:5432/db", "pw")),
    ("postgresql://:pw@db/mlflow", ("postgresql://db/mlflow", "pw")),
    ("postgresql://u@/db?host=/var/run/postgresql", ("postgresql://u@/db?host=/var/run/postgresql", None)),
    ("postgresql://db/mlflow", ("postgresql://db/mlflow", None)),
])
def test_split_password_takes_it_out_of_the_uri(uri, expected):
    assert is_postgres(uri) and split_password(uri) == expected


@pytest.mark.parametrize("uri", ["sqlite:////tmp/m.db", "http://mlflow:5000", "postgres-ish://x", "mysql://u:p@h/d"])
def test_other_stores_are_not_postgres(uri):
    assert not is_postgres(uri)


@pytest.mark.parametrize("text, expected", [
    ("postgresql://mlflow:hunter2@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
    ("postgresql://mlflow:a/b:c@db/mlflow", "postgresql://mlflow:***@db/mlflow"),  # `/` and `:` in a raw password
    ("postgresql://mlflow@db/mlflow?sslmode=require&password=hunter2",
     "postgresql://mlflow@db/mlflow?sslmode=require&password=***"),
    ("host=db user=mlflow password=hunter2 dbname=mlflow", "host=db user=mlflow password=*** dbname=mlflow"),
])
def test_redact_hides_database_passwords_in_every_form(text, expected):
    assert redact(text) == expected and "hunter2" not in redact(text)


@pytest.mark.parametrize("message, expected", [
    ('connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  password authentication '
     'failed for user "mlflow"', 'password authentication failed for user "mlflow"; check the password'),
    ('connection failed: connection to server at "db", port 5432 failed: FATAL:  database "mlflow" does not exist',
     'database "mlflow" does not exist; create it first'),
    ('connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused\n\tIs the server '
     'running on that host and accepting TCP/IP connections?', "it does not answer (Connection refused); is "
                                                               "PostgreSQL running there"),
    ("connection timeout expired", "it does not answer (connection timeout expired)"),
    ("failed to resolve host 'db.invalid': [Errno -2] Name or service not known", "it does not answer (failed to "
                                                                                 "resolve host 'db.invalid'"),
    ("Multiple connection attempts failed. All failures were:\n- host: 'localhost', port: '1', hostaddr: '::1': "
     "connection failed: connection to server at \"::1\", port 1 failed: Connection refused\n- host: 'localhost', "
     "port: '1', hostaddr: '127.0.0.1': connection failed: connection to server at \"127.0.0.1\", port 1 failed: "
     "Connection refused", "it does not answer (Connection refused)"),
])
def test_libpq_failures_become_one_line_with_what_to_do(message, expected):
    line = describe_failure(message)
    assert line.startswith(expected) and "\n" not in line


def test_a_postgres_store_that_does_not_answer_is_refused_in_seconds_with_the_password_hidden():
    uri = f"postgresql://mlflow:hunter2@127.0.0.1:{free_port()}/mlflow"
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable) as info:
        check_reachable(uri, timeout_s=2)
    assert time.monotonic() - started < 30
    assert "mlflow:***@127.0.0.1" in str(info.value) and "does not answer" in str(info.value)
    assert "hunter2" not in str(info.value) and "\n" not in str(info.value)


def test_mlflow_server_gets_the_password_in_its_environment_not_on_its_command_line(tmp_path, monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    plan = plan_server(backend_store_uri="postgresql://mlflow:hunter2@db:5432/mlflow?sslmode=require",
                       artifacts_destination=str(tmp_path / "art"), root=tmp_path / "unused")
    assert "hunter2" not in " ".join(plan.command) and plan.env["PGPASSWORD"] == "hunter2"
    assert "postgresql://mlflow@db:5432/mlflow?sslmode=require" in plan.command
    assert "hunter2" not in "\n".join(describe(plan)) and plan.password_in_env
    sqlite = plan_server(artifacts_destination=str(tmp_path / "art"), root=tmp_path / "server")
    assert not sqlite.password_in_env and "PGPASSWORD" not in sqlite.env


def test_mlflow_server_refuses_a_postgres_store_that_does_not_answer_before_it_starts(tmp_path):
    from leukotune.tuner.cluster.mlflow_server import ServerError, prepare_backend_store

    plan = plan_server(backend_store_uri=f"postgresql://mlflow:hunter2@127.0.0.1:{free_port()}/mlflow",
                       artifacts_destination=str(tmp_path / "art"), root=tmp_path / "unused")
    with pytest.raises(ServerError) as info:
        prepare_backend_store(plan, timeout_s=2)
    message = str(info.value)
    assert message.startswith("backend store postgresql://mlflow:***@127.0.0.1:") and "does not answer" in message
    assert "hunter2" not in message and "\n" not in message
