"""A constraint failure or a full disk raised by the database at row N of a
write (injected with a trigger): nothing is published, the run is ``failed``
with the database's error, exit 1, and it is not retried. A transient error
(serialization failure, deadlock) that keeps happening is retried a bounded
number of times, with backoff, each attempt logged, then fails the same way."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from batch_scorer.storage.db import create_engine
from tests.faults_support import Run, ok
from tests.helpers import AS_OF, features_frame, job, load_table, query, save_model, train, write_config

ROWS = 6_000
BAD_ROW = 4_321  # well past the first chunks: earlier rows were already written


def _install_failing_trigger(url: str, errcode: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql(
                    f"CREATE TRIGGER fail_at_row BEFORE INSERT ON predictions "
                    f"WHEN NEW.entity_id = {BAD_ROW} "
                    f"BEGIN SELECT RAISE(ABORT, 'injected {errcode} at entity {BAD_ROW}'); END"
                )
            else:
                conn.exec_driver_sql(
                    "CREATE FUNCTION fail_at_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    f"IF NEW.entity_id = {BAD_ROW} THEN RAISE EXCEPTION "
                    f"'injected {errcode} at entity {BAD_ROW}' USING ERRCODE = '{errcode}'; "
                    "END IF; RETURN NEW; END $$"
                )
                conn.exec_driver_sql(
                    "CREATE TRIGGER fail_at_row BEFORE INSERT ON predictions "
                    "FOR EACH ROW EXECUTE FUNCTION fail_at_row()"
                )
    finally:
        engine.dispose()


@pytest.mark.parametrize("errcode", ["unique_violation", "disk_full"])
def test_database_error_at_row_n_publishes_nothing_and_is_not_retried(
    tmp_path: Path, db_url: str, errcode: str
) -> None:
    if errcode == "disk_full" and db_url.startswith("sqlite"):
        pytest.skip("a SQLite trigger can raise a constraint error, not SQLITE_FULL")
    load_table(db_url, features_frame(ROWS, seed=2))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, db_url, {"j": job(chunk_size=500)},
                       database={"url": db_url, "retries": 2, "retry_backoff_seconds": 0.1})
    as_of = ("--as-of", AS_OF.isoformat())
    ok(cfg, "run", "j", *as_of)

    _install_failing_trigger(db_url, errcode)
    rerun = Run(cfg, "run", "j", *as_of)
    assert rerun.finish() == 1, rerun.stderr

    assert f"injected {errcode} at entity {BAD_ROW}" in rerun.stderr
    assert "Traceback" not in rerun.stderr
    assert "attempt 1 of" not in rerun.stderr, "a non-transient error was retried"
    runs = query(db_url, "SELECT run_id, status, error FROM scoring_runs ORDER BY run_id")
    assert [(r[0], r[1]) for r in runs] == [(1, "succeeded"), (2, "failed")]
    assert f"injected {errcode} at entity {BAD_ROW}" in runs[1][2]
    # The published set is still exactly the first run's: nothing of run 2.
    assert query(db_url, "SELECT count(*), min(run_id), max(run_id) FROM predictions") == [
        (ROWS, 1, 1)
    ]
    assert query(db_url, "SELECT count(*) FROM rejected_rows") == [(0,)]


def test_database_error_on_first_run_leaves_table_empty(tmp_path: Path, pg_url: str) -> None:
    load_table(pg_url, features_frame(ROWS, seed=2))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, pg_url, {"j": job(chunk_size=500)})
    ok(cfg, "init-db")
    _install_failing_trigger(pg_url, "check_violation")
    run = Run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    assert run.finish() == 1, run.stderr
    assert query(pg_url, "SELECT count(*) FROM predictions") == [(0,)]
    assert query(pg_url, "SELECT status FROM scoring_runs") == [("failed",)]
    engine = create_engine(pg_url)
    try:
        # No transaction was left open on the table (a DBA can alter it at once).
        with engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL lock_timeout = '2s'"))
            conn.execute(sa.text("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE"))
    finally:
        engine.dispose()


@pytest.mark.parametrize("errcode", ["serialization_failure"])
def test_transient_error_is_retried_a_bounded_number_of_times_with_backoff(
    tmp_path: Path, pg_url: str, errcode: str
) -> None:
    load_table(pg_url, features_frame(ROWS, seed=2))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, pg_url, {"j": job(chunk_size=500)},
                       database={"url": pg_url, "retries": 2, "retry_backoff_seconds": 0.5})
    as_of = ("--as-of", AS_OF.isoformat())
    ok(cfg, "run", "j", *as_of)
    _install_failing_trigger(pg_url, errcode)  # fails every attempt, like a hot row would

    started = time.monotonic()
    rerun = Run(cfg, "run", "j", *as_of)
    assert rerun.finish() == 1, rerun.stderr
    took = time.monotonic() - started

    # Three attempts (1 + retries: 2), each logged, with 0.5 s then 1 s of backoff.
    assert "attempt 1 of 3 failed with a transient database error" in rerun.stderr
    assert "attempt 2 of 3 failed with a transient database error" in rerun.stderr
    assert "attempt 3 of 3 failed with a transient database error" in rerun.stderr
    assert "giving up" in rerun.stderr and "attempt 4" not in rerun.stderr
    assert took >= 1.5
    runs = query(pg_url, "SELECT status FROM scoring_runs ORDER BY run_id")
    assert runs == [("succeeded",), ("failed",), ("failed",), ("failed",)]
    assert query(pg_url, "SELECT count(*), min(run_id), max(run_id) FROM predictions") == [
        (ROWS, 1, 1)
    ]
