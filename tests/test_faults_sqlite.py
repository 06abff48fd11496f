"""SQLite: a second writer holding the database makes a run fail with "database is
locked by another writer" after the busy timeout (not at once, not a hang); a
SIGKILL in the middle of the publish transaction leaves an intact file with
nothing partial visible."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

from tests.faults_support import Run, ok
from tests.helpers import AS_OF, features_frame, job, load_table, query, save_model, train, write_config

BUSY_TIMEOUT_S = 1.5


def _db_file(sqlite_url: str) -> str:
    return sqlite_url.removeprefix("sqlite:///")


def test_second_writer_holding_the_file_fails_the_run_clearly_after_busy_timeout(
    tmp_path: Path, sqlite_url: str
) -> None:
    load_table(sqlite_url, features_frame(200))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, sqlite_url, {"j": job()},
                       database={"url": sqlite_url, "busy_timeout_seconds": BUSY_TIMEOUT_S})
    ok(cfg, "init-db")

    holder = sqlite3.connect(_db_file(sqlite_url), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer, mid-transaction
        started = time.monotonic()
        run = Run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
        code = run.finish(timeout=60)
        took = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()

    assert code == 1, run.stderr
    assert "database is locked by another writer" in run.stderr
    assert "busy_timeout_seconds" in run.stderr
    assert "Traceback" not in run.stderr
    assert took >= BUSY_TIMEOUT_S, f"failed after {took:.2f}s, before the busy timeout"
    assert took < BUSY_TIMEOUT_S + 20, f"took {took:.1f}s: it should give up after the busy timeout"
    assert query(sqlite_url, "SELECT count(*) FROM predictions") == [(0,)]
    # Nothing was left behind: once the other writer is gone the run succeeds.
    ok(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    assert query(sqlite_url, "SELECT count(*) FROM predictions") == [(200,)]


def test_sigkill_during_publish_leaves_an_intact_file_and_one_whole_run(
    tmp_path: Path, sqlite_url: str
) -> None:
    rows = 60_000
    load_table(sqlite_url, features_frame(rows, seed=3))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, sqlite_url, {"j": job(chunk_size=5_000, pass_through=["note"])})
    as_of = ("--as-of", AS_OF.isoformat())
    ok(cfg, "run", "j", *as_of)

    rerun = Run(cfg, "run", "j", *as_of)
    # All rows are staged once the last progress line is out; then the publish
    # transaction holds the file's write lock. Kill the process inside it.
    rerun.wait_for(lambda ln: f": {rows} rows read" in ln)
    probe = sqlite3.connect(_db_file(sqlite_url), isolation_level=None, timeout=0)
    killed_in_publish = False
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and rerun.proc.poll() is None:
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.rollback()
            except sqlite3.OperationalError:  # locked: the publish is under way
                rerun.proc.send_signal(signal.SIGKILL)
                killed_in_publish = True
                break
    finally:
        probe.close()
    rerun.finish(timeout=30)
    assert killed_in_publish, "the publish was never caught holding the write lock:\n" + rerun.stderr

    assert query(sqlite_url, "PRAGMA integrity_check") == [("ok",)]
    # Either the publish had not committed (run 1 whole) or it had (run 2 whole).
    [(count, distinct, low, high)] = query(
        sqlite_url, "SELECT count(*), count(DISTINCT entity_id), min(run_id), max(run_id) FROM predictions"
    )
    assert (count, distinct) == (rows, rows) and low == high
    status = dict(query(sqlite_url, "SELECT run_id, status FROM scoring_runs"))
    assert status[1] == "succeeded" and (status[2] == "running" if low == 1 else status[2] == "succeeded")
