"""Faults as an operator meets them, with real processes on the real PostgreSQL: a job
lock session terminated by a DBA is retried like any lost connection; a backfill that
finds every date's lock held says so and exits 3; and what cron mails from a run whose
connection was killed is log lines with a time stamp (plus the command's own Error
lines), each once, naming the job and the run."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from batch_scorer.storage.db import create_engine
from batch_scorer.storage.locks import lock_key
from tests.faults_support import Run, unique_name
from tests.helpers import AS_OF, features_frame, job, load_table, query, save_model, train, write_config
from tests.schedule_support import START
from tests.test_faults_connection import _job, _kill_mid

ROWS = 30_000
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")


def _kill_lock_session(url: str, job_name: str) -> list[bool]:
    """``pg_terminate_backend`` on the session holding the job's advisory lock."""
    engine = create_engine(url)
    try:
        key = lock_key(engine, job_name)
        with engine.begin() as conn:
            return list(conn.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                        "AND objsubid = 1 AND classid::bigint = :hi AND objid::bigint = :lo"),
                {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF},
            ).scalars())
    finally:
        engine.dispose()


def test_terminated_lock_session_is_retried_and_the_retry_publishes_one_whole_run(
    tmp_path: Path, pg_url: str
) -> None:
    load_table(pg_url, features_frame(ROWS, seed=4))
    save_model(train("forest"), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, pg_url, {"j": job(chunk_size=200)},
                       database={"url": pg_url, "retries": 2, "retry_backoff_seconds": 0.1})
    run = Run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    run.wait_for_rows()
    assert _kill_lock_session(pg_url, "j") == [True], "the run's lock session was not found"
    assert run.finish() == 0, run.stderr

    assert "job j run 1 as_of 2026-03-31: attempt 1 of 3 failed with a transient database error" in run.stderr
    runs = query(pg_url, "SELECT run_id, status, error FROM scoring_runs ORDER BY run_id")
    assert [(r[0], r[1]) for r in runs] == [(1, "failed"), (2, "succeeded")]
    assert "lost its job lock" in runs[0][2]
    assert query(pg_url, "SELECT count(*), count(DISTINCT entity_id), min(run_id), max(run_id) "
                         "FROM predictions") == [(ROWS, ROWS, 2, 2)]


# A backfill whose read stops after the first row until the test lets it go: the
# probe row (entity 1) passes, the run's stream then waits on a lock the test holds.
BLOCKING_QUERY = """
SELECT entity_id, x1, x2, x3, color FROM features
WHERE snapshot_date = :as_of AND (entity_id = 1 OR pg_advisory_lock_shared(4242, 1)::text = '')
"""


def _reader_waits(url: str) -> bool:
    rows = query(url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                      "AND classid = 4242 AND objid = 1 AND objsubid = 2")
    return rows[0][0] > 0


def test_backfill_that_finds_the_lock_held_for_every_date_counts_them_and_exits_3(
    tmp_path: Path, pg_url: str
) -> None:
    days = [START + timedelta(days=i) for i in range(3)]
    load_table(pg_url, pd.concat([features_frame(50, seed=i, as_of=d) for i, d in enumerate(days)]))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    (tmp_path / "blocking.sql").write_text(BLOCKING_QUERY)
    cfg = write_config(tmp_path, pg_url, {"j": job(query="blocking.sql")})
    gate = create_engine(pg_url)
    try:
        with gate.connect() as holder:
            holder.execute(sa.text("SELECT pg_advisory_lock(4242, 1)"))
            first = Run(cfg, "backfill", "j", "--start", str(days[0]), "--end", str(days[0]))
            deadline = time.monotonic() + 60
            while not _reader_waits(pg_url):
                assert time.monotonic() < deadline and first.proc.poll() is None, first.stderr
                time.sleep(0.05)
            second = Run(cfg, "backfill", "j", "--start", str(days[0]), "--end", str(days[-1]))
            assert second.finish() == 3, second.stderr
            holder.execute(sa.text("SELECT pg_advisory_unlock(4242, 1)"))
            holder.commit()
        assert first.finish() == 0, first.stderr
    finally:
        gate.dispose()

    summary = second.proc.stdout.read() if second.proc.stdout else ""
    assert ("backfill j: 3 date(s): 0 succeeded, 0 skipped (already succeeded), 0 failed, "
            "3 skipped (another run held the lock), 0 not attempted") in summary
    # Each skipped date's Error line names the run that held the lock.
    errors = [ln for ln in second.lines if ln.startswith("Error: ")]
    assert [ln.split(":")[1].strip() for ln in errors] == [f"as_of {d}" for d in days]
    assert all("is already being scored by run 1 " in ln for ln in errors)
    statuses = query(pg_url, "SELECT run_id, as_of, status FROM scoring_runs ORDER BY run_id")
    assert [(r, str(d), s) for r, d, s in statuses] == [
        (1, str(days[0]), "succeeded"), *((i + 2, str(d), "skipped") for i, d in enumerate(days))]


@pytest.mark.parametrize("retries", [0, 2])
def test_a_killed_connection_logs_only_time_stamped_lines_each_naming_job_and_run(
    tmp_path: Path, pg_url: str, pg_base_url: str, retries: int
) -> None:
    app = unique_name("bslog")
    run = Run(_job(tmp_path, pg_url, app, retries=retries), "run", "j", "--as-of", AS_OF.isoformat())
    _kill_mid(run, pg_base_url, app, "writer")
    assert run.finish() == (1 if retries == 0 else 0), run.stderr

    lines = [ln.rstrip("\n") for ln in run.lines if ln.strip()]
    raw = [ln for ln in lines if not STAMP.match(ln) and not ln.startswith("Error: ")]
    assert raw == [], run.stderr
    assert "error ignored terminating" not in run.stderr
    runtime = [ln for ln in lines if " batch_scorer.runtime." in ln]
    assert runtime and all(re.search(r"\bjob j run \d+\b", ln) for ln in runtime), run.stderr
    assert len(lines) == len(set(lines)), "a line was printed twice"
    if retries == 0:
        assert len([ln for ln in lines if ln.startswith("Error: ")]) == 1
        assert "failed after" in run.stderr and "job j run 1 as_of" in run.stderr
