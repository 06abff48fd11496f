"""The connection is terminated mid-read and mid-write (``pg_terminate_backend``):
the run retries the whole unit of work or fails cleanly, and no partial rows are
ever visible. Transient errors are retried a bounded number of times, logged per
attempt; nothing else is retried. Real server, real sessions, real processes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from batch_scorer.storage.db import create_engine
from batch_scorer.storage.retry import is_transient, sqlstate
from tests.faults_support import Run, app_url, sessions, terminate, unique_name
from tests.helpers import AS_OF, features_frame, job, load_table, query, save_model, train, write_config

ROWS = 30_000


# A feature query that takes a while (as real ones do): the server pauses every
# 1,000 rows, so the test can kill the session while rows are still coming.
SLOW_QUERY = """
SELECT entity_id, x1, x2, x3, color FROM features
WHERE snapshot_date = :as_of AND (entity_id % 1000 <> 0 OR pg_sleep(0.05)::text = '')
"""


def _job(tmp_path: Path, pg_url: str, app: str, retries: int) -> Path:
    load_table(pg_url, features_frame(ROWS, seed=4))
    save_model(train("forest"), tmp_path / "models" / "m.joblib")
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "slow.sql").write_text(SLOW_QUERY)
    return write_config(
        tmp_path,
        app_url(pg_url, app),
        {"j": job(query="sql/slow.sql", chunk_size=1_000)},
        database={"url": app_url(pg_url, app), "retries": retries, "retry_backoff_seconds": 0.2},
    )


def _lost_connection(text: str) -> bool:
    # Killed between statements the server says why (SQLSTATE 57P01); killed in
    # the middle of a COPY the driver only sees the socket close.
    return any(words in text for words in (
        "terminating connection due to administrator command",
        "server closed the connection unexpectedly",
        "the connection is lost",
    ))


def _is_target(session: dict[str, Any], target: str) -> bool:
    sql = str(session["query"]).lower()
    if target == "writer":
        # The session COPYing the run's rows into the output table, in its open
        # transaction (the first run's setup also writes, its tables: not that one).
        return bool(session["has_xid"]) and sql.startswith("copy predictions")
    # The session still running the source query (the server is still sending rows).
    return (
        session["state"] == "active" and not session["has_xid"] and "features" in sql
        and float(session["running_s"]) > 0.3  # type: ignore[arg-type]
    )


def _kill_mid(run: Run, base_url: str, app: str, target: str) -> None:
    """Terminate the run's reading session while it runs the source query (rows may
    not have reached the client yet: the reader fetches in large batches), or its
    writing session while it COPYs rows in (a run's first 5,000 rows wait in memory,
    the rest go in through the COPY the writer keeps open: the session is looked for
    from the start, not after a progress line, which can come late)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [s for s in sessions(base_url, app) if _is_target(s, target)]
        if found:
            assert run.proc.poll() is None, "the run finished before its session was killed"
            assert terminate(base_url, int(found[0]["pid"]))  # type: ignore[call-overload]
            return
        time.sleep(0.02)
    run.proc.kill()
    raise AssertionError(f"no {target} session found: {sessions(base_url, app)}\n{run.stderr}")


@pytest.mark.parametrize("target", ["reader", "writer"])
def test_connection_killed_mid_run_is_retried_and_publishes_one_whole_run(
    tmp_path: Path, pg_url: str, pg_base_url: str, target: str
) -> None:
    app = unique_name("bsfault")
    cfg = _job(tmp_path, pg_url, app, retries=2)
    run = Run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    _kill_mid(run, pg_base_url, app, target)
    assert run.finish() == 0, run.stderr

    assert "attempt 1 of 3 failed with a transient database error" in run.stderr
    runs = query(pg_url, "SELECT run_id, status, error FROM scoring_runs ORDER BY run_id")
    assert [(r[0], r[1]) for r in runs] == [(1, "failed"), (2, "succeeded")]
    assert _lost_connection(runs[0][2])
    # One whole run visible, nothing of the killed attempt.
    assert query(pg_url, "SELECT count(*), count(DISTINCT entity_id), min(run_id), max(run_id) "
                 "FROM predictions") == [(ROWS, ROWS, 2, 2)]


@pytest.mark.parametrize("target", ["reader", "writer"])
def test_connection_killed_mid_run_without_retries_fails_cleanly(
    tmp_path: Path, pg_url: str, pg_base_url: str, target: str
) -> None:
    app = unique_name("bsfault")
    cfg = _job(tmp_path, pg_url, app, retries=0)
    run = Run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    _kill_mid(run, pg_base_url, app, target)
    assert run.finish() == 1, run.stderr

    assert "Traceback" not in run.stderr
    assert "Error: " in run.stderr and _lost_connection(run.stderr)
    [(status, error)] = query(pg_url, "SELECT status, error FROM scoring_runs")
    assert status == "failed"
    assert _lost_connection(error)
    assert query(pg_url, "SELECT count(*) FROM predictions") == [(0,)]
    # The run left no session behind (its transaction is gone, not idle).
    assert sessions(pg_base_url, app) == []


def _error_from(url: str, sql: str) -> BaseException:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(sql))
    except sa.exc.DBAPIError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError(f"{sql!r} did not fail")


def _raise(errcode: str) -> str:
    return f"DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{errcode}'; END $$"


@pytest.mark.parametrize("driver", ["postgresql+psycopg", "postgresql+psycopg2"])
def test_only_connection_loss_serialization_and_deadlock_are_transient(
    pg_base_url: str, driver: str
) -> None:
    url = sa.engine.make_url(pg_base_url).set(drivername=driver).render_as_string(hide_password=False)
    transient = {
        "connection terminated": _error_from(url, "SELECT pg_terminate_backend(pg_backend_pid())"),
        "serialization failure": _error_from(url, _raise("serialization_failure")),
        "deadlock": _error_from(url, _raise("deadlock_detected")),
    }
    permanent = {
        "unique violation": _error_from(url, _raise("unique_violation")),
        "check violation": _error_from(url, _raise("check_violation")),
        "disk full": _error_from(url, _raise("disk_full")),
        "permission denied": _error_from(url, _raise("insufficient_privilege")),
        "syntax error": _error_from(url, "SELEC 1"),
        "division by zero": _error_from(url, "SELECT 1/0"),
        "statement timeout": _error_from(url, "SET statement_timeout = 1; SELECT pg_sleep(1)"),
    }
    assert {name: is_transient(exc) for name, exc in transient.items()} == dict.fromkeys(transient, True)
    assert {name: is_transient(exc) for name, exc in permanent.items()} == dict.fromkeys(permanent, False)
    assert sqlstate(permanent["disk full"]) == "53100"
    # Seen through our own wrappers too (DatabaseError(...) from exc).
    try:
        raise RuntimeError("wrapped") from transient["deadlock"]
    except RuntimeError as wrapped:
        assert is_transient(wrapped)
