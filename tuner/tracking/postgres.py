"""PostgreSQL as MLflow's store: say in seconds why a database cannot be used, and keep its password off command lines.

MLflow's SQLAlchemy store meets a server that does not answer, a refused password or a missing database only when
its first request runs (for `mlflow server`, inside a worker, as a traceback). Here one connection with libpq's
`connect_timeout` tells those apart before anything starts. libpq's messages never carry the password.

The driver is psycopg (3): SQLAlchemy 2.1's default for `postgresql://`, so MLflow's store and this check use the
same one.
"""
from __future__ import annotations

import re
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

# MLflow passes the URI to SQLAlchemy: `postgresql://` or `postgresql+<driver>://`.
SCHEME = "postgresql"
PASSWORD_ENV = "PGPASSWORD"  # libpq reads it when the connection string holds no password
CONNECT_TIMEOUT_S = 5
SCHEMA_LOCK_KEY = 0x6C6B74756E65  # "lktune": the advisory lock servers take to set up MLflow's tables one at a time

_HINTS = (
    (re.compile(r"password authentication failed|no password supplied|authentication failed", re.I),
     "check the password (in the URI, PGPASSWORD or ~/.pgpass)"),
    (re.compile(r"database \S+ does not exist", re.I), "create it first (createdb -O USER DATABASE)"),
    (re.compile(r"role \S+ does not exist", re.I), "create the role first (createuser --pwprompt USER)"),
)
_NOT_ANSWERING = re.compile(r"Connection refused|timeout expired|failed to resolve host|could not translate host name|"
                            r"No route to host|Network is unreachable|No such file or directory|Connection reset|"
                            r"server closed the connection", re.I)


def is_postgres(uri: str) -> bool:
    return urlsplit(str(uri)).scheme.split("+", 1)[0] == SCHEME


def split_password(uri: str) -> tuple[str, str | None]:
    """The URI without its password (in the user part or `?password=`) and the password, decoded, or None."""
    parts = urlsplit(uri)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    password = None
    netloc = parts.netloc
    if at and ":" in userinfo:
        user, _, encoded = userinfo.partition(":")
        password = unquote(encoded)
        netloc = f"{user}@{hostport}" if user else hostport
    fields = parts.query.split("&") if parts.query else []
    kept = [field for field in fields if not field.startswith("password=")]
    if len(kept) != len(fields):  # the other fields stay exactly as written
        # SQLAlchemy decodes a query value with unquote_plus, the user part with unquote; MLflow reads it so.
        password = unquote_plus(next(f for f in fields if f.startswith("password="))[len("password="):])
    return urlunsplit(parts._replace(netloc=netloc, query="&".join(kept))), password


def connect(uri: str, timeout_s: float = CONNECT_TIMEOUT_S, **options):
    """A psycopg connection to the database of a SQLAlchemy-style PostgreSQL URI, with its password decoded as
    SQLAlchemy decodes it for MLflow (else libpq's PGPASSWORD or ~/.pgpass)."""
    import psycopg

    bare, password = split_password(uri)
    dsn = SCHEME + bare[bare.index("://"):]  # libpq reads postgresql:// URIs, not SQLAlchemy's +driver form
    if password is not None:
        options["password"] = password
    return psycopg.connect(dsn, connect_timeout=max(1, round(timeout_s)), **options)


def connection_problem(uri: str, timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when the database accepts a connection, else the reason in one line with what to do about it."""
    try:
        import psycopg
    except ImportError:
        return "the PostgreSQL driver is not installed (pip install 'psycopg[binary]')"
    try:
        connect(uri, timeout_s).close()
    except psycopg.Error as exc:
        return describe_failure(str(exc))
    return None


def create_mlflow_schema(uri: str, artifact_root: str) -> None:
    """MLflow's tables, created by one server at a time.

    Every `mlflow server` creates the tables of an empty database as it starts, guarded by a lock file that only
    serialises servers on one machine: two replicas starting together on a new database race, and one dies on a
    duplicate `alembic_version`. Here the same store set-up the server runs happens under a PostgreSQL advisory lock,
    so each server after the first finds the tables (and MLflow's Default experiment) ready. An existing database
    is only checked: an out-of-date schema raises MLflow's own error, which names `mlflow db upgrade`.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    with connect(uri, autocommit=True) as session:
        session.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))  # released when the session ends
        SqlAlchemyStore(uri, artifact_root).engine.dispose()


def describe_failure(message: str) -> str:
    """libpq's (multi-line) failure as one line: what went wrong, then what to check."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()] or ["connection failed"]
    if lines[0].startswith("Multiple connection attempts failed"):  # one `- host: ...: error` line per address
        lines = [line for line in lines if line.startswith("- ")][-1:] or lines
    # The caller names the URI; keep what libpq says after `connection to server at "h", port p failed:`.
    reason = re.sub(r"^- .*?: (?=connection )", "", lines[0])
    reason = re.sub(r"^connection (failed|is bad): ", "", reason)
    reason = re.sub(r"^connection to server (at|on) .*? failed:\s*", "", reason)
    reason = re.sub(r"^(FATAL|ERROR):\s+", "", reason)
    if _NOT_ANSWERING.search(reason):
        return f"it does not answer ({reason}); is PostgreSQL running there and accepting TCP connections?"
    for pattern, hint in _HINTS:
        if pattern.search(reason):
            return f"{reason}; {hint}"
    return reason
