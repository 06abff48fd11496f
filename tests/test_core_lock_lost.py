"""A run that loses its job lock mid-way (its lock session killed, its lock row
taken over) never publishes: the check runs inside the publish transaction."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from batch_scorer.storage.db import create_engine
from batch_scorer.storage.locks import lock_key
from tests.faults_support import Run
from tests.helpers import AS_OF, features_frame, job, load_table, query, save_model, train, write_config

ROWS = 30_000


def _slow_job(tmp_path: Path, url: str) -> Path:
    load_table(url, features_frame(ROWS, seed=4))
    save_model(train("forest"), tmp_path / "models" / "m.joblib")
    return write_config(tmp_path, url, {"j": job(chunk_size=200)}, database={"url": url, "retries": 0})


def test_run_whose_advisory_lock_session_is_killed_publishes_nothing(tmp_path: Path, pg_url: str) -> None:
    cfg = _slow_job(tmp_path, pg_url)
    run = Run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    run.wait_for_rows()
    engine = create_engine(pg_url)
    try:
        key = lock_key(engine, "j")
        with engine.begin() as conn:
            killed = conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND objsubid = 1 AND classid::bigint = :hi AND objid::bigint = :lo"
                ),
                {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF},
            ).scalars().all()
    finally:
        engine.dispose()
    assert killed == [True], "the run's lock session was not found"
    assert run.finish() == 1, run.stderr
    assert "lost its job lock" in run.stderr
    assert query(pg_url, "SELECT count(*) FROM predictions") == [(0,)]
    assert query(pg_url, "SELECT status FROM scoring_runs") == [("failed",)]


def test_run_whose_sqlite_lock_row_is_taken_over_publishes_nothing(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _slow_job(tmp_path, sqlite_url)
    run = Run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    run.wait_for_rows()
    engine = create_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            taken = conn.execute(sa.text("UPDATE job_locks SET pid = 999999999 WHERE job = 'j'")).rowcount
    finally:
        engine.dispose()
    assert taken == 1
    assert run.finish() == 1, run.stderr
    assert "lost its job lock" in run.stderr
    assert query(sqlite_url, "SELECT count(*) FROM predictions") == [(0,)]
    assert query(sqlite_url, "SELECT status FROM scoring_runs") == [("failed",)]
