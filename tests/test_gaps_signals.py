"""SIGTERM with several jobs running at once on worker threads (``run --all --parallel 2``):
every job rolls back and records itself before the process exits 143, and no output
holds part of a set. A second SIGTERM while that clean-up is stuck (the ledger row
locked by another session, SQLite's write lock held) ends the process at once. Real
processes, real signals."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from batch_scorer.storage.db import create_engine
from tests.faults_support import Run, app_url, sessions, unique_name
from tests.fleet_support import as_of_arg, country_frame, matrix_job
from tests.gaps_support import poll, rows_of_query
from tests.helpers import AS_OF, cli_run, features_frame, job, load_table, save_model, train, write_config

COUNTRIES = ["AT", "BE", "CH", "DE"]
ROWS = 4_000  # per country


def _running(url: str) -> list[int]:
    """The run ids of the ledger's ``running`` rows ([] before the ledger exists)."""
    try:
        return [r for (r,) in rows_of_query(url, "SELECT run_id FROM scoring_runs WHERE status = 'running'")]
    except Exception:  # noqa: BLE001 - the ledger does not exist yet
        return []


def test_sigterm_with_two_jobs_running_in_parallel_records_each_and_publishes_no_part_of_a_set(
    tmp_path: Path, db_url: str
) -> None:
    load_table(db_url, country_frame(ROWS, COUNTRIES))
    for country in COUNTRIES:
        save_model(train("forest"), tmp_path / "models" / f"m_{country}.joblib")
    cfg = write_config(tmp_path, db_url, {"m": matrix_job(COUNTRIES, chunk_size=200)})

    run = Run(cfg, "run", "--all", "--parallel", "2", *as_of_arg())
    # Both jobs on the pool's worker threads (two more wait: none runs on the main thread).
    running = poll(lambda: [ids for ids in [_running(db_url)] if len(ids) >= 2], timeout=60,
                   what="two jobs running at once", alive=lambda: run.proc.poll() is None)[0]
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish(timeout=30) == 128 + signal.SIGTERM, run.stderr
    assert "Traceback" not in run.stderr

    ledger = rows_of_query(db_url, "SELECT run_id, job, status, error FROM scoring_runs ORDER BY run_id")
    assert ledger, run.stderr
    assert {r[2] for r in ledger} <= {"failed", "succeeded"}, ledger  # none left running
    interrupted = [r for r in ledger if r[2] == "failed"]
    assert all("interrupted by SIGTERM" in (r[3] or "") for r in interrupted), ledger
    # The jobs running at the signal were stopped on their threads (one may have been
    # committing at that very moment: then it succeeded, whole).
    assert {r[0] for r in interrupted} & set(running), (running, ledger)
    published = {(job, run_id): (n, distinct) for job, run_id, n, distinct in rows_of_query(
        db_url, "SELECT job, run_id, count(*), count(DISTINCT entity_id) FROM predictions GROUP BY job, run_id")}
    succeeded = {(job, run_id) for run_id, job, status, _ in ledger if status == "succeeded"}
    assert set(published) == succeeded  # only succeeded runs have rows, and each of them has
    assert all(counts == (ROWS, ROWS) for counts in published.values()), published  # whole sets only


def _slow_job(tmp_path: Path, url: str) -> Path:
    load_table(url, features_frame(12_000, seed=9))
    save_model(train("forest"), tmp_path / "models" / "m.joblib")
    return write_config(tmp_path, url, {"j": job(chunk_size=300)},
                        database={"url": url, "busy_timeout_seconds": 20})


def _sleeping_in_c(pid: int) -> bool:
    """The process's main thread sleeps in the kernel (SQLite's busy wait: it naps and retries)."""
    wchan = Path(f"/proc/{pid}/wchan")
    if not wchan.exists():
        pytest.skip("needs Linux's /proc/<pid>/wchan to see where the process waits")
    return "nanosleep" in wchan.read_text()


@contextlib.contextmanager
def _ledger_blocked(url: str) -> Iterator[Callable[[int, str], bool]]:
    """Another session holds what the clean-up must write: the running ledger row (PostgreSQL,
    SELECT ... FOR UPDATE) or the database's write lock (SQLite, BEGIN IMMEDIATE). Yields a
    check that the run's clean-up is waiting for it."""
    if url.startswith("sqlite"):
        blocker = sqlite3.connect(sa.engine.make_url(url).database, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            yield lambda pid, _app: _sleeping_in_c(pid)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        return
    engine = create_engine(url)
    conn = engine.connect()
    try:
        conn.exec_driver_sql("SELECT run_id FROM scoring_runs WHERE status = 'running' FOR UPDATE")
        yield lambda _pid, app: any(s["state"] == "active" and "UPDATE scoring_runs" in str(s["query"])
                                    for s in sessions(url, app))
    finally:
        conn.rollback()
        conn.close()
        engine.dispose()


def test_a_second_sigterm_while_the_clean_up_waits_for_the_ledger_exits_at_once(tmp_path: Path, db_url: str) -> None:
    app = unique_name("gaps_sig")
    url = app_url(db_url, app) if db_url.startswith("postgresql") else db_url
    cfg = _slow_job(tmp_path, url)
    run = Run(cfg, "run", "j", "--as-of", str(AS_OF))
    run.wait_for_rows()
    with _ledger_blocked(db_url) as clean_up_waits:
        run.proc.send_signal(signal.SIGTERM)
        poll(lambda: clean_up_waits(run.proc.pid, app), timeout=20, what="the clean-up waiting for the ledger",
             alive=lambda: run.proc.poll() is None)
        sent = time.monotonic()
        run.proc.send_signal(signal.SIGTERM)
        code = run.finish(timeout=40)
        took = time.monotonic() - sent
    assert code == 128 + signal.SIGTERM, run.stderr
    assert took < 3, f"the second SIGTERM took {took:.1f}s to end the process"
    assert "second SIGTERM while stopping: exiting now" in run.stderr
    # Nothing was published; the row the clean-up could not close is found stale by the next run.
    assert rows_of_query(db_url, "SELECT count(*) FROM predictions") == [(0,)]
    assert rows_of_query(db_url, "SELECT status FROM scoring_runs") == [("running",)]
    assert cli_run(cfg, "run", "j", "--as-of", str(AS_OF)).exit_code == 0
    assert rows_of_query(db_url, "SELECT status FROM scoring_runs ORDER BY run_id") == [("abandoned",), ("succeeded",)]
    assert rows_of_query(db_url, "SELECT count(*) FROM predictions") == [(12_000,)]
