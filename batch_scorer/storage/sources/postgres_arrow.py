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
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from batch_scorer.errors import DatabaseError
from batch_scorer.masking import first_line, mask_text
from batch_scorer.storage.columns import exact_name
from batch_scorer.storage.db import libpq_uri

log = logging.getLogger(__name__)

READ_AHEAD = 1  # chunks read ahead of the one being scored
_POLL_S = 0.2
_END = object()
# Render the read statement with its (date) literals for the driver; "named"
# so a '%' in a query file is not doubled as it would be for psycopg.
_LITERAL_DIALECT = postgresql.dialect(paramstyle="named")



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
    sql = str(stmt.compile(dialect=_LITERAL_DIALECT, compile_kwargs={"literal_binds": True}))
    uri = libpq_uri(conn.engine.url)
    secrets = (conn.engine.url.password or "",)
    chunks: queue.Queue[Any] = queue.Queue(maxsize=READ_AHEAD)
    stop = threading.Event()

    def produce() -> None:
        try:
            for frame in _arrow_frames(uri, sql, chunk_size, set(exact), set(features)):
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


def _arrow_frames(
    uri: str, sql: str, chunk_size: int, exact: set[str], features: set[str]
) -> Iterator[pd.DataFrame]:
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(uri) as aconn, aconn.cursor() as cur:
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
