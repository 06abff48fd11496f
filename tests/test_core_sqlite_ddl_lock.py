"""SQLite: creating the tool's tables or a job's output table while another
process briefly holds the write lock waits (busy timeout) instead of failing at
once. A deferred transaction that reads the schema and then writes gets
SQLITE_BUSY immediately; found when two simultaneous runs raced in CI."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import sqlalchemy as sa

from batch_scorer.storage.db import begin_write, create_engine
from batch_scorer.storage.ddl import create_tool_tables, ensure_output
from batch_scorer.storage.schema import output_table


def _hold_write_lock(engine: sa.Engine, seconds: float, held: threading.Event) -> None:
    with begin_write(engine) as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS other_writer (x INTEGER)")
        held.set()
        time.sleep(seconds)


def test_creating_tables_waits_for_another_writer_instead_of_failing(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}", busy_timeout_s=10)
    try:
        for create in (
            lambda: create_tool_tables(engine),
            lambda: ensure_output(
                engine, output_table("predictions", [("id", sa.BigInteger())], [], sa.Float()), ["id"], False
            ),
        ):
            held = threading.Event()
            holder = threading.Thread(target=_hold_write_lock, args=(engine, 0.7, held))
            holder.start()
            assert held.wait(10)
            started = time.monotonic()
            create()
            waited = time.monotonic() - started
            holder.join()
            assert waited > 0.3, "did not wait for the other writer"
        names = set(sa.inspect(engine).get_table_names()) | set(sa.inspect(engine).get_view_names())
        assert {"scoring_runs", "predictions", "predictions_latest"} <= names
    finally:
        engine.dispose()
