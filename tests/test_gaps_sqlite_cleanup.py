"""On SQLite, a source read that fails part-way ends its read at once: the connection it
goes back to the pool on can then write (record the run ``failed``) after waiting
``busy_timeout_seconds`` for another writer, like any write, instead of getting
"database is locked" at once because its own half-read SELECT still holds a read
transaction (SQLite does not wait for the write lock on a connection that has one)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from batch_scorer.storage.db import begin_write, create_engine
from batch_scorer.storage.sources.spec import SourceSpec
from batch_scorer.storage.sources.sql import read_chunks
from tests.gaps_support import poll
from tests.helpers import AS_OF, features_frame, load_table


def _main_thread_sleeps() -> bool:
    """This process's main thread naps in the kernel: SQLite's busy wait for the write lock."""
    wchan = Path(f"/proc/self/task/{threading.main_thread().native_id}/wchan")
    if not wchan.exists():
        pytest.skip("needs Linux's /proc to see where the main thread waits")
    return "nanosleep" in wchan.read_text()


@contextlib.contextmanager
def _another_writer(path: str) -> contextlib.AbstractContextManager[None]:  # type: ignore[misc]
    """Another process's write transaction, ended once this process waits for it."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    over = threading.Event()

    def release() -> None:
        try:
            poll(lambda: over.is_set() or _main_thread_sleeps(), timeout=10, what="the write to wait for the lock")
        finally:
            other.execute("ROLLBACK")

    waiter = threading.Thread(target=release, daemon=True)
    waiter.start()
    try:
        yield
    finally:
        over.set()
        waiter.join(timeout=15)
        other.close()


def test_a_read_that_fails_part_way_leaves_its_connection_able_to_wait_for_the_write_lock(
    sqlite_url: str,
) -> None:
    frame = features_frame(1_000, seed=2)
    frame["signup"] = date(2025, 1, 1)
    load_table(sqlite_url, frame, signup=sa.Date())
    path = str(sa.engine.make_url(sqlite_url).database)
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE features SET signup = 'not a date' WHERE entity_id = 250")  # in chunk 3 of 10
    engine = create_engine(sqlite_url, busy_timeout_s=20, pool_size=1)  # one connection: the read's
    spec = SourceSpec(job="j", key=("entity_id",), table="features", as_of_column="snapshot_date")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE marks (run_id INTEGER)")
        chunks_read = 0
        try:
            with engine.connect() as conn, contextlib.closing(
                read_chunks(conn, spec, AS_OF, ["entity_id", "signup"], 100)
            ) as chunks:
                for _ in chunks:
                    chunks_read += 1
        except ValueError:  # a run records its failure while it holds the error, as here
            assert chunks_read == 2
            with _another_writer(path), begin_write(engine) as conn:
                conn.exec_driver_sql("INSERT INTO marks VALUES (1)")  # waits for the lock, then writes
        else:
            raise AssertionError("the bad date was read without an error")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT run_id FROM marks").all() == [(1,)]
    finally:
        engine.dispose()
