"""PostgreSQL's fast write: output frames into their tables with binary COPY.

:mod:`batch_scorer.storage.sinks.pgcopy` encodes each output frame as binary
COPY with numpy; one writer thread streams the frames of every output of a run
(the champion's table, the shadow table) on the publication's connection,
inside its transaction, so nothing is visible until the commit that also
closes the ledger row. Consecutive frames for the same table share one
``COPY ... FROM STDIN``; a frame for another table ends it and starts the
next. The queue holds at most two frames (only the columns written).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from batch_scorer.errors import RunFailed
from batch_scorer.storage.db import TableRows
from batch_scorer.storage.sinks import pgcopy
from batch_scorer.storage.sinks.output import OutputSpec

log = logging.getLogger(__name__)

QUEUE_DEPTH = 2  # output frames waiting for the writer
_POLL_S = 0.2
_END = object()


def column_oids(conn: Connection, table: sa.Table) -> dict[str, int]:
    """The type OID of each column of ``table`` as the server has it."""
    name = conn.dialect.identifier_preparer.format_table(table)
    rows = conn.execute(
        sa.text(
            "SELECT attname, atttypid FROM pg_attribute "
            "WHERE attrelid = CAST(:t AS regclass) AND attnum > 0 AND NOT attisdropped"
        ),
        {"t": name},
    )
    return {r[0]: int(r[1]) for r in rows}


def copyable(oids: dict[str, int], table: sa.Table) -> list[str]:
    """The columns of ``table`` binary COPY cannot encode here (empty: COPY it)."""
    return sorted(c.name for c in table.columns if not pgcopy.supported(oids.get(c.name, 0)))


class CopyEncoder:
    """How one output's frames become binary COPY rows: column order, type OIDs, constants."""

    def __init__(self, conn: Connection, output: OutputSpec, oids: dict[str, int]) -> None:
        self.output = output
        table = output.table
        names = [c.name for c in table.columns]
        self._oids = [oids[n] for n in names]
        by_name = dict(zip(names, self._oids, strict=True))
        # The run's constants, encoded once.
        self._const = {n: pgcopy.encode_constant(v, by_name[n]) for n, v in output.constants.items()}
        prep = conn.dialect.identifier_preparer
        self.copy_sql = (
            f"COPY {prep.format_table(table)} ({', '.join(prep.quote(n) for n in names)}) "
            "FROM STDIN (FORMAT binary)"
        )

    def encode(self, frame: pd.DataFrame) -> bytes:
        columns: list[Any] = [
            self._const[c.name] if c.name in self._const else _arrow(frame[c.name])
            for c in self.output.table.columns
        ]
        try:
            return pgcopy.encode_rows(columns, self._oids, len(frame))
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
            raise self._misfit(columns) from exc

    def _misfit(self, columns: list[Any]) -> RunFailed:
        """Which column's values do not fit; the message never echoes a value."""
        bad = "?"
        table = self.output.table
        for column, oid, arr in zip(table.columns, self._oids, columns, strict=True):
            if isinstance(arr, bytes):
                continue
            try:
                pgcopy.encode_rows([arr], [oid], len(arr))
            except (pa.ArrowException, ValueError, TypeError, OverflowError):
                bad = column.name
                break
        return RunFailed(
            f"job {self.output.constants.get('job')!r}: values of column {bad!r} do not fit the output "
            f"table {table.name!r}'s column of that name (out of range or another type); "
            "nothing was published. Widen that column (as the table owner) or give the job "
            "its own output.table."
        )


class CopyStream:
    """The writer thread: ``(encoder, frame)`` items into COPYs on one connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_DEPTH)
        self._error: BaseException | None = None
        self._inner_error: BaseException | None = None
        self._pending: Any = None  # the first item of the next COPY
        self._stop = threading.Event()
        self.waited = self.encoding = self.sending = 0.0
        self._thread = threading.Thread(target=self._run, name="bs-writer", daemon=True)
        self._thread.start()

    # called from the run's thread -----------------------------------------
    def put(self, encoder: CopyEncoder, frame: pd.DataFrame) -> None:
        self._raise_if_failed()
        t0 = time.perf_counter()
        while True:
            try:
                self._queue.put((encoder, frame), timeout=_POLL_S)
                self.waited += time.perf_counter() - t0
                return
            except queue.Full:
                self._raise_if_failed()
                if not self._thread.is_alive():
                    raise RuntimeError("the COPY writer thread ended unexpectedly") from None

    def drain(self) -> None:
        """Wait until every frame is in the database (the last COPY ended)."""
        while True:
            try:
                self._queue.put(_END, timeout=_POLL_S)
                break
            except queue.Full:
                self._raise_if_failed()
        while self._thread.is_alive():
            self._thread.join(timeout=_POLL_S)
        self._raise_if_failed()

    def abort(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc

    # the writer thread ----------------------------------------------------
    def _next(self) -> Any:
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    raise _Aborted() from None
                continue
            if self._stop.is_set():
                raise _Aborted()
            return item

    def _segment(self, first: tuple[CopyEncoder, pd.DataFrame]) -> Iterator[bytes]:
        """One COPY's bytes: ``first`` and the frames after it for the same table."""
        yield pgcopy.HEADER
        item: Any = first
        while True:
            encoder, frame = item
            t0 = time.perf_counter()
            try:
                data = encoder.encode(frame)
            except BaseException as exc:
                self._inner_error = exc
                raise
            t1 = time.perf_counter()
            self.encoding += t1 - t0
            yield data
            self.sending += time.perf_counter() - t1
            item = self._next()
            if item is _END or item[0] is not encoder:
                self._pending = item
                break
        yield pgcopy.TRAILER

    def _run(self) -> None:
        dbapi_conn = self._conn.connection.dbapi_connection
        sql = ""
        try:
            while (item := self._next()) is not _END:
                sql = item[0].copy_sql
                _copy(dbapi_conn, sql, self._segment(item))
        except _Aborted:
            return
        except BaseException as exc:
            # Our own error raised inside the COPY (psycopg2 wraps it in its own).
            inner = self._inner_error
            self._error = inner if inner is not None else _wrap_driver_error(self._conn, sql, exc)
            self._stop.set()


def copy_frames(conn: Connection, encoder: CopyEncoder, frames: list[pd.DataFrame]) -> None:
    """One binary COPY of ``frames`` on ``conn`` in its transaction, on the calling thread (a
    small job's rows, at publish); driver errors raised as SQLAlchemy's."""
    parts = [pgcopy.HEADER, *(encoder.encode(f) for f in frames), pgcopy.TRAILER]
    try:
        _copy(conn.connection.dbapi_connection, encoder.copy_sql, iter(parts))
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _wrap_driver_error(conn, encoder.copy_sql, exc) from exc


def _copy(dbapi_conn: Any, sql: str, parts: Iterator[bytes]) -> None:
    if hasattr(dbapi_conn, "pgconn"):  # psycopg 3
        with dbapi_conn.cursor() as cur, cur.copy(sql) as copy:
            for data in parts:
                copy.write(data)
    else:  # psycopg2
        with dbapi_conn.cursor() as cur:
            cur.copy_expert(sql, _Stream(parts), size=1 << 20)


class _Aborted(Exception):
    """Raised inside the COPY to make the driver send CopyFail."""


class _Stream:
    """A file-like view of an iterator of byte strings (psycopg2's copy_expert reads it)."""

    def __init__(self, parts: Iterator[bytes]) -> None:
        self._parts = parts

    def read(self, size: int = -1) -> bytes:
        for part in self._parts:
            if part:
                return part
        return b""

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)


def _arrow(values: Any) -> pa.Array:
    if isinstance(values, pd.Series):
        if isinstance(values.dtype, pd.ArrowDtype):
            return pa.array(values.array)
        values = values.to_numpy()
    return pa.array(values, from_pandas=True)


def _wrap_driver_error(conn: Connection, sql: str, exc: BaseException) -> BaseException:
    """Driver errors become SQLAlchemy's, as on the generic path (retry and messages see them)."""
    dbapi = conn.dialect.loaded_dbapi
    if isinstance(exc, dbapi.Error):
        return sa.exc.DBAPIError.instance(sql, None, exc, dbapi.Error)  # type: ignore[arg-type]
    return exc


# Fewer rows than this go in as one INSERT: a COPY's own round trips cost more.
COPY_ROWS_MIN = 16


def copy_rows(conn: Connection, table: sa.Table, rows: TableRows) -> bool:
    """Insert ``rows`` into ``table`` with one text COPY on ``conn``'s psycopg 3 connection,
    in its transaction; False (nothing done) when the driver is not psycopg 3 or the rows
    are few, for the caller's INSERT to do it.

    SQLAlchemy's executemany builds a parameter set per row: for the ~300 profile rows a
    run publishes, that cost more than the rest of the publish."""
    if len(rows) < COPY_ROWS_MIN or conn.dialect.driver != "psycopg":
        return False
    prep = conn.dialect.identifier_preparer
    sql = f"COPY {prep.format_table(table)} ({', '.join(prep.quote(n) for n in rows.names)}) FROM STDIN"
    dbapi_conn = conn.connection.driver_connection
    with dbapi_conn.cursor() as cur, cur.copy(sql) as copy:
        for row in rows.values:
            copy.write_row(row)
    return True
