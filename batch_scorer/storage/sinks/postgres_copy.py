"""PostgreSQL's fast write: scored chunks into the output table with binary COPY.

:mod:`batch_scorer.storage.sinks.pgcopy` encodes each scored chunk as binary
COPY with numpy; a writer thread streams it into the output table on the
run's own SQLAlchemy connection, inside the run's transaction, so nothing is
visible until the commit that also closes the ledger row. The writer's queue
holds at most two scored chunks (only the columns it writes).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from batch_scorer.errors import RunFailed
from batch_scorer.storage.columns import exact_column
from batch_scorer.storage.sinks import pgcopy

log = logging.getLogger(__name__)

QUEUE_DEPTH = 2  # scored chunks waiting for the writer
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


class CopyWriter:
    """Scored chunks into the output table with binary COPY, on a writer thread.

    The COPY runs on the run's connection inside its open transaction, which
    first deletes the rows a re-run replaces; :meth:`publish` waits for the
    last chunk, calls ``finish`` (the ledger row) and commits.
    """

    def __init__(
        self,
        conn: Connection,
        table: sa.Table,
        stamp: Any,
        oids: dict[str, int],
        delete_replaced: Callable[[Connection], None],
    ) -> None:
        self._conn = conn
        self._tx = conn.begin()
        # First, not at publish: publishing is then only the commit that
        # follows the last COPY (readers see neither change before it).
        delete_replaced(conn)
        self._table = table
        self._stamp = stamp
        names = [c.name for c in table.columns]
        self._oids = [oids[n] for n in names]
        by_name = dict(zip(names, self._oids, strict=True))
        # The run's constants (the stamp's fields), encoded once.
        self._const = {n: pgcopy.encode_constant(v, by_name[n]) for n, v in dataclasses.asdict(stamp).items()}
        self._null = pgcopy.encode_constant(None, 25)
        self._row_columns = [n for n in names if n not in self._const and n not in ("prediction", "score")]
        prep = conn.dialect.identifier_preparer
        self._copy_sql = (
            f"COPY {prep.format_table(table)} ({', '.join(prep.quote(n) for n in names)}) "
            "FROM STDIN (FORMAT binary)"
        )
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_DEPTH)
        self._error: BaseException | None = None
        self._inner_error: BaseException | None = None
        self._waited = self._encoding = self._sending = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bs-writer", daemon=True)
        self._thread.start()

    # called from the main thread ------------------------------------------
    def write(self, rows: pd.DataFrame, prediction: np.ndarray, score: np.ndarray | None) -> None:
        self._raise_if_failed()
        if not len(rows):
            return
        # Only the columns written wait in the queue, not the chunk's features:
        # when the server is the bottleneck the queue is full (issue 4: memory).
        rows = pd.DataFrame({c: exact_column(rows, c) for c in self._row_columns}, copy=False)
        t0 = time.perf_counter()
        while True:
            try:
                self._queue.put((rows, prediction, score), timeout=_POLL_S)
                self._waited += time.perf_counter() - t0
                return
            except queue.Full:
                self._raise_if_failed()
                if not self._thread.is_alive():
                    raise RuntimeError("the COPY writer thread ended unexpectedly") from None

    def publish(self, finish: Any) -> None:
        t0 = time.perf_counter()
        self._drain()
        t1 = time.perf_counter()
        finish(self._conn)
        self._tx.commit()
        self._conn.close()
        log.debug(
            "run %s: waited %.2fs for the writer's queue, %.2fs for its last chunks, %.2fs to "
            "publish; writer busy %.2fs encoding, %.2fs sending",
            self._stamp.run_id, self._waited, t1 - t0, time.perf_counter() - t1, self._encoding,
            self._sending,
        )

    def abort(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            if self._tx.is_active:
                self._tx.rollback()
        finally:
            self._conn.close()

    def _drain(self) -> None:
        while True:
            try:
                self._queue.put(_END, timeout=_POLL_S)
                break
            except queue.Full:
                self._raise_if_failed()
        while self._thread.is_alive():
            self._thread.join(timeout=_POLL_S)
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc

    # the writer thread ----------------------------------------------------
    def _items(self) -> Iterator[bytes]:
        yield pgcopy.HEADER
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    raise _Aborted() from None
                continue
            if item is _END:
                break
            if self._stop.is_set():
                raise _Aborted()
            t0 = time.perf_counter()
            try:
                data = self._encode(*item)
            except BaseException as exc:
                self._inner_error = exc
                raise
            t1 = time.perf_counter()
            self._encoding += t1 - t0
            yield data
            self._sending += time.perf_counter() - t1
        yield pgcopy.TRAILER

    def _run(self) -> None:
        dbapi_conn = self._conn.connection.dbapi_connection
        try:
            if hasattr(dbapi_conn, "pgconn"):  # psycopg 3
                with dbapi_conn.cursor() as cur, cur.copy(self._copy_sql) as copy:
                    for data in self._items():
                        copy.write(data)
            else:  # psycopg2
                with dbapi_conn.cursor() as cur:
                    cur.copy_expert(self._copy_sql, _Stream(self._items()), size=1 << 20)
        except _Aborted:
            return
        except BaseException as exc:
            # Our own error raised inside the COPY (psycopg2 wraps it in its own).
            inner = self._inner_error
            self._error = inner if inner is not None else _wrap_driver_error(self._conn, self._copy_sql, exc)
            self._stop.set()

    def _encode(self, rows: pd.DataFrame, prediction: np.ndarray, score: np.ndarray | None) -> bytes:
        columns: list[Any] = []
        for column in self._table.columns:
            name = column.name
            if name in self._const:
                columns.append(self._const[name])
            elif name == "prediction":
                columns.append(_arrow(prediction))
            elif name == "score":
                columns.append(self._null if score is None else _arrow(score))
            else:
                columns.append(_arrow(rows[name]))
        try:
            return pgcopy.encode_rows(columns, self._oids, len(rows))
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
            raise self._misfit(columns) from exc

    def _misfit(self, columns: list[Any]) -> RunFailed:
        """Which column's values do not fit; the message never echoes a value."""
        bad = "?"
        for column, oid, arr in zip(self._table.columns, self._oids, columns, strict=True):
            if isinstance(arr, bytes):
                continue
            try:
                pgcopy.encode_rows([arr], [oid], len(arr))
            except (pa.ArrowException, ValueError, TypeError, OverflowError):
                bad = column.name
                break
        return RunFailed(
            f"job {self._stamp.job!r}: values of column {bad!r} do not fit the output table "
            f"{self._table.name!r}'s column of that name (out of range or another type); "
            "nothing was published. Widen that column (as the table owner) or give the job "
            "its own output.table."
        )


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
