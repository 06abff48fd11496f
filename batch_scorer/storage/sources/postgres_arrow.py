"""PostgreSQL's fast read: the source as Arrow over binary COPY, on a reader thread.

Why: the cost of the obvious ``read_sql -> predict -> to_sql`` script is
Python objects, one per value. Here no value becomes a Python object: the ADBC
PostgreSQL driver runs the source query as ``COPY (...) TO STDOUT (FORMAT
binary)`` and hands back Arrow record batches; a thread re-chunks them to
``chunk_size`` rows and converts each chunk to a DataFrame while the caller
scores the previous one. The reader keeps one chunk ahead, so memory is bounded
by the chunk size.

Keys and pass-through columns keep their exact database types end to end
(Arrow-backed pandas columns, see :mod:`batch_scorer.storage.columns`); feature
columns get the same pandas types the generic path gives the model.

Bound values (as_of, day bounds, filters, query parameters, partition bounds)
reach COPY as literals: COPY takes no parameters, and ADBC's bound-parameter
path buffers the whole result in memory instead of streaming it (3M rows:
860 MB against 170 MB). :func:`pg_literal` writes each literal from the
value's Python type alone: strings as ``E'...'`` with backslashes and quotes
doubled and everything outside printable ASCII as a ``\\u`` escape, so the
text is the same value whatever ``standard_conforming_strings`` or the client
encoding are, and no value can end its literal.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from datetime import date, datetime, timedelta
from datetime import time as clock
from decimal import Decimal
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql.base import PGCompiler
from sqlalchemy.engine import Connection, Engine

from batch_scorer.errors import DatabaseError, SourceError
from batch_scorer.masking import first_line, mask_text
from batch_scorer.storage.columns import exact_name
from batch_scorer.storage.db import libpq_uri

log = logging.getLogger(__name__)

READ_AHEAD = 1  # chunks read ahead of the one being scored
_POLL_S = 0.2
_END = object()


class _LiteralCompiler(PGCompiler):
    """Renders every bound value with :func:`pg_literal` (never a type's own literal renderer)."""

    def render_literal_value(self, value: Any, type_: sa.types.TypeEngine[Any]) -> str:
        return pg_literal(value)


class _LiteralDialect(postgresql.dialect):
    """PostgreSQL's SQL, with bound values rendered by :class:`_LiteralCompiler`."""

    statement_compiler = _LiteralCompiler


# "named" so a '%' in a query file is not doubled as it would be for psycopg.
_LITERAL_DIALECT = _LiteralDialect(paramstyle="named")


def render_sql(stmt: sa.Select[Any]) -> str:
    """``stmt`` as one SQL text with its bound values as literals (see :func:`pg_literal`)."""
    return str(stmt.compile(dialect=_LITERAL_DIALECT, compile_kwargs={"literal_binds": True}))


def pg_literal(value: Any) -> str:
    """A PostgreSQL literal for ``value``, by its Python type; TypeError for a type it does not know."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, numbers.Integral):
        # Parenthesised: "10 -:p" must not become "10 --5", a comment.
        return str(int(value)) if value >= 0 else f"({int(value)})"
    if isinstance(value, float):
        text = repr(value) if math.isfinite(value) else {"nan": "NaN", "inf": "Infinity"}.get(
            repr(value), "-Infinity")
        return f"CAST('{text}' AS DOUBLE PRECISION)"
    if isinstance(value, Decimal):
        if value.is_snan():
            raise TypeError("a signalling NaN decimal has no PostgreSQL value")
        return f"CAST('{value}' AS NUMERIC)"
    if isinstance(value, str):
        return _pg_string(value)
    return _pg_typed_literal(value)


def _pg_typed_literal(value: Any) -> str:
    if isinstance(value, datetime):
        kind = "TIMESTAMP" if value.tzinfo is None else "TIMESTAMPTZ"
        return f"{kind} '{value.isoformat()}'"
    if isinstance(value, date):
        return f"DATE '{value.isoformat()}'"
    if isinstance(value, clock):
        return f"{'TIME' if value.tzinfo is None else 'TIMETZ'} '{value.isoformat()}'"
    if isinstance(value, timedelta):
        return f"CAST('{value.days} days {value.seconds} seconds {value.microseconds} microseconds' AS INTERVAL)"
    if isinstance(value, uuid.UUID):
        return f"CAST('{value}' AS UUID)"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"DECODE('{bytes(value).hex()}', 'hex')"
    raise TypeError(f"a value of type {type(value).__name__} cannot be passed to PostgreSQL")


def _pg_string(value: str) -> str:
    out = []
    for ch in value:
        code = ord(ch)
        if ch == "\\" or ch == "'":
            out.append(ch * 2)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code == 0 or 0xD800 <= code <= 0xDFFF:
            raise TypeError("a string with a NUL character or a lone surrogate has no PostgreSQL value")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04X}")
        else:
            out.append(f"\\U{code:08X}")
    return "E'" + "".join(out) + "'"


def read_chunks(
    conn: Connection,
    stmt: sa.Select[Any],
    chunk_size: int,
    exact: Sequence[str],
    features: Sequence[str],
    job: str,
) -> Iterator[pd.DataFrame]:
    """Stream ``stmt``'s rows as DataFrames of at most ``chunk_size`` rows.

    ``exact`` names the key and pass-through columns: they come back as
    Arrow-backed columns with their database types intact. ``features``
    convert as pandas converts them by default (what the model was fitted
    on); a column in both lists also gets an exact copy under
    :func:`exact_name`.
    """
    try:
        sql = render_sql(stmt)
    except (TypeError, sa.exc.CompileError) as exc:
        raise SourceError(f"job {job!r}: a filter or query parameter value cannot be sent: {exc}") from None
    pool = arrow_pool(conn.engine)
    secrets = (conn.engine.url.password or "",)
    chunks: queue.Queue[Any] = queue.Queue(maxsize=READ_AHEAD)
    stop = threading.Event()

    def produce() -> None:
        try:
            for frame in _arrow_frames(pool, sql, chunk_size, set(exact), set(features)):
                if not _put(chunks, frame, stop):
                    return
            _put(chunks, _END, stop)
        except BaseException as exc:  # handed to the consumer, raised there
            _put(chunks, exc, stop)

    thread = threading.Thread(target=produce, name="bs-reader", daemon=True)
    thread.start()
    waited = 0.0
    try:
        while True:
            t0 = time.perf_counter()
            item = chunks.get()
            waited += time.perf_counter() - t0
            if item is _END:
                log.debug("job %s: waited %.2fs for the reader", job, waited)
                break
            if isinstance(item, BaseException):
                raise _read_error(item, job, secrets) from item
            yield item
    finally:
        stop.set()
        thread.join(timeout=30)


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _read_error(exc: BaseException, job: str, secrets: tuple[str, ...]) -> BaseException:
    if isinstance(exc, DatabaseError | KeyboardInterrupt | MemoryError):
        return exc
    text = mask_text(first_line(exc), secrets)
    return DatabaseError(f"job {job!r}: reading the source failed: {text}")


class ArrowPool:
    """Idle ADBC connections of one engine, reused across reads.

    Opening an ADBC connection costs about 45 ms (it loads the server's type
    catalogue); a fleet of 200 small jobs would pay it 200 times. A connection
    whose read did not finish cleanly is closed, never reused. The pool closes
    when its engine is disposed.
    """

    def __init__(self, uri: str, size: int = 8) -> None:
        self._uri = uri
        self._size = size
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    def checkout(self) -> Any:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        import adbc_driver_postgresql.dbapi as adbc

        # Autocommit: an idle pooled connection holds no transaction (no snapshot,
        # no lock on the source table).
        return adbc.connect(self._uri, autocommit=True)

    def checkin(self, aconn: Any, clean: bool) -> None:
        with self._lock:
            if clean and len(self._idle) < self._size:
                self._idle.append(aconn)
                return
        with contextlib.suppress(Exception):
            aconn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for aconn in idle:
            with contextlib.suppress(Exception):
                aconn.close()


_pools: weakref.WeakKeyDictionary[Engine, ArrowPool] = weakref.WeakKeyDictionary()
_pools_lock = threading.Lock()


def arrow_pool(engine: Engine) -> ArrowPool:
    """The engine's pool of ADBC connections, made on first use, closed with the engine."""
    with _pools_lock:
        pool = _pools.get(engine)
        if pool is None:
            pool = _pools[engine] = ArrowPool(libpq_uri(engine.url))
            sa.event.listen(engine, "engine_disposed", lambda _engine: pool.close())
        return pool


def _arrow_frames(
    pool: ArrowPool, sql: str, chunk_size: int, exact: set[str], features: set[str]
) -> Iterator[pd.DataFrame]:
    aconn = pool.checkout()
    clean = False
    try:
        with aconn.cursor() as cur:
            cur.execute(sql)
            reader = cur.fetch_record_batch()
            pending: list[pa.RecordBatch] = []
            held = 0
            for batch in reader:
                pending.append(batch)
                held += batch.num_rows
                while held >= chunk_size:
                    table = pa.Table.from_batches(pending, schema=reader.schema)
                    yield to_frame(table.slice(0, chunk_size), exact, features)
                    rest = table.slice(chunk_size)
                    pending = rest.to_batches()
                    held = rest.num_rows
            if held:
                yield to_frame(pa.Table.from_batches(pending, schema=reader.schema), exact, features)
        clean = True
    finally:
        pool.checkin(aconn, clean)


def to_frame(table: pa.Table, exact: set[str], features: set[str]) -> pd.DataFrame:
    """One chunk as a DataFrame: exact columns Arrow-backed, features as pandas converts them."""
    names = table.column_names
    as_feature = [n for n in names if n in features or n not in exact]
    cols: dict[str, pd.Series] = {}
    if as_feature:
        converted = pa.table({n: _feature_array(table.column(n)) for n in as_feature}).to_pandas()
        cols.update((n, converted[n]) for n in as_feature)
    for name in names:
        if name in exact:
            series = pd.Series(pd.arrays.ArrowExtensionArray(_plain(table.column(name))), copy=False)
            cols[exact_name(name) if name in cols else name] = series
    order = names + [exact_name(n) for n in names if exact_name(n) in cols]
    return pd.DataFrame({n: cols[n] for n in order}, copy=False)


def _plain(arr: pa.ChunkedArray) -> pa.ChunkedArray:
    """Extension types (numeric, json, uuid) as plain Arrow values (text for numeric)."""
    if not isinstance(arr.type, pa.ExtensionType):
        return arr
    storage = pa.chunked_array([c.storage for c in arr.chunks], type=arr.type.storage_type)
    if pa.types.is_fixed_size_binary(storage.type) and storage.type.byte_width == 16:
        import uuid

        return pa.chunked_array(
            [pa.array([None if b is None else str(uuid.UUID(bytes=b)) for b in storage.to_pylist()])],
            type=pa.string(),
        )
    return storage


def _feature_array(arr: pa.ChunkedArray) -> pa.ChunkedArray:
    plain = _plain(arr)
    ext = arr.type
    if isinstance(ext, pa.ExtensionType) and getattr(ext, "type_name", "") == "numeric":
        # numeric arrives as text; the model sees float64 (as Decimal -> float
        # does on the generic path).
        return pc.cast(plain, pa.float64())
    return plain
