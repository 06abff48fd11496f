"""Of several jobs reading one source (one read-once group), only the job that failed with
a transient error is run again: its lock session or its publication's connection killed
by ``pg_terminate_backend`` mid-run (PostgreSQL), its lock row deleted (SQLite). A job
of the same group that failed for good (its model raises) is not retried, and the job
that succeeded is not run twice. Each attempt has its own ledger row; each output table
holds one whole set, by the attempt that succeeded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from batch_scorer import api
from batch_scorer.storage.db import create_engine
from batch_scorer.storage.locks import lock_key
from batch_scorer.storage.sinks import staging
from tests.gaps_support import poll, rows_of_query, save_strict_model, statuses
from tests.helpers import AS_OF, features_frame, job, load_table, save_model, train, write_config

N = 400


def _group(tmp_path: Path, url: str) -> Path:
    """Jobs a, b, c on one source (same table, as_of and chunk size): c's model raises on
    the purple rows (a category it never saw), a's and b's score everything."""
    frame = features_frame(N, seed=8)
    frame.loc[frame.index % 2 == 0, "color"] = "purple"
    load_table(url, frame)
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    save_strict_model(tmp_path / "models" / "strict.joblib")
    jobs = {"a": job(output="out_a", chunk_size=100), "b": job(output="out_b", chunk_size=100),
            "c": job(model="models/strict.joblib", output="out_c", chunk_size=100)}
    return write_config(tmp_path, url, jobs, database={"url": url, "retries": 2, "retry_backoff_seconds": 0})


def _terminate(url: str, pid_sql: str, **params: Any) -> None:
    """From another session, as a DBA would: end the backend ``pid_sql`` finds, and wait until it is gone."""
    pid = poll(lambda: rows_of_query(url, pid_sql, **params), timeout=10, what="the session to kill")[0][0]
    assert rows_of_query(url, "SELECT pg_terminate_backend(:p)", p=pid) == [(True,)]
    poll(lambda: not rows_of_query(url, "SELECT 1 FROM pg_stat_activity WHERE pid = :p", p=pid),
         timeout=10, what=f"backend {pid} to end")


def _kill_lock_session(url: str) -> None:
    engine = create_engine(url)
    try:
        key = lock_key(engine, "b")
    finally:
        engine.dispose()
    _terminate(url, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
                    "AND classid::bigint = :hi AND objid::bigint = :lo", hi=(key >> 32) & 0xFFFFFFFF,
               lo=key & 0xFFFFFFFF)


def _kill_publication(url: str) -> None:
    # The session COPYing b's rows into out_b inside its (not yet committed) transaction.
    _terminate(url, "SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                    "WHERE c.relname = 'out_b' AND l.mode = 'RowExclusiveLock' AND l.granted "
                    "AND c.relnamespace = to_regnamespace(current_schema())::oid")


def _delete_lock_row(url: str) -> None:
    # An operator deleting the lock row of a live run (the advice for a dead host's row).
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text("DELETE FROM job_locks WHERE job = 'b'")).rowcount == 1
    finally:
        engine.dispose()


PG_FAULTS = {
    "lock_session": (_kill_lock_session, "lost its job lock"),
    "publication": (_kill_publication, "database error"),
}


@pytest.mark.parametrize("fault", list(PG_FAULTS))
def test_only_the_job_whose_session_was_killed_is_run_again_of_a_group_reading_one_source(
    tmp_path: Path, pg_url: str, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every frame straight to the COPY writer, as a job of more than MEMORY_ROWS rows does:
    # the publication's session is then mid-COPY while the run streams.
    monkeypatch.setattr(staging, "MEMORY_ROWS", 0)
    _only_b_is_retried(tmp_path, pg_url, *PG_FAULTS[fault])


def test_only_the_job_whose_lock_row_was_deleted_is_run_again_of_a_group_reading_one_source(
    tmp_path: Path, sqlite_url: str
) -> None:
    _only_b_is_retried(tmp_path, sqlite_url, _delete_lock_row, "lost its job lock")


def _only_b_is_retried(tmp_path: Path, url: str, break_b: Callable[[str], None], why: str) -> None:
    cfg = _group(tmp_path, url)
    hit: list[int] = []
    seen: list[tuple[str, int]] = []

    def on_progress(name: str, run_id: int, rows: int, _seconds: float) -> None:
        seen.append((name, rows))
        if name == "b" and not hit:  # once, in b's first attempt, after its first chunk
            hit.append(run_id)
            break_b(url)

    results = {r.job: r for r in api.run(cfg, ["a", "b", "c"], as_of=AS_OF, parallel=3, on_progress=on_progress)}

    assert hit, "b never reported progress"
    # One read served the three: each chunk went to a, b and c in turn.
    assert seen[:3] == [("a", 100), ("b", 100), ("c", 100)], seen
    assert {n: r.status for n, r in results.items()} == {"a": "succeeded", "b": "succeeded", "c": "failed"}
    assert statuses(url) == {"a": ["succeeded"], "b": ["failed", "succeeded"], "c": ["failed"]}
    [(first_b, error)] = rows_of_query(url, "SELECT run_id, error FROM scoring_runs WHERE job = 'b' AND "
                                            "status = 'failed'")
    assert first_b == hit[0] and why in error, error
    assert results["b"].run_id != first_b
    whole = "SELECT count(*), count(DISTINCT entity_id), min(run_id), max(run_id) FROM {t}"
    assert rows_of_query(url, whole.format(t="out_a")) == [(N, N, results["a"].run_id, results["a"].run_id)]
    assert rows_of_query(url, whole.format(t="out_b")) == [(N, N, results["b"].run_id, results["b"].run_id)]
    assert rows_of_query(url, "SELECT count(*) FROM out_c") == [(0,)]
