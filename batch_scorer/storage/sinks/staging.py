"""Writing a run's predictions and publishing them all at once.

Writing and publishing are separate steps (DESIGN.md: a future scale-out driver
publishes what workers wrote). Until :meth:`Writer.publish` commits, no reader
sees any row of the run:

* SQLite: chunks go to a TEMP staging table (private to the connection, and
  gone if the process dies); publish is one ``BEGIN IMMEDIATE`` transaction that
  deletes the rows a re-run replaces, copies the staging rows in, and closes
  the ledger row.
* PostgreSQL: one transaction first deletes the rows a re-run replaces, then
  chunks go straight into the output table (MVCC hides both from readers);
  publish closes the ledger row and commits.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from batch_scorer.errors import SourceError
from batch_scorer.storage import ledger
from batch_scorer.storage.columns import exact_column
from batch_scorer.storage.db import DuplicateKeys, duplicate_keys
from batch_scorer.storage.schema import ensure_output, output_table
from batch_scorer.storage.sinks import pgcopy, postgres_copy

log = logging.getLogger(__name__)

FinishFn = Callable[[Connection], None]


@dataclass(frozen=True)
class RunStamp:
    """The constants every output row of one run carries."""

    job: str
    as_of: date
    model_version: str
    run_id: int
    scored_at: datetime


class Writer(Protocol):
    """What a run writes through; see the module docstring for the two kinds.

    ``write`` takes a scored chunk: the source rows (keys and pass-through
    columns are read from them) with the model's ``prediction`` and ``score``
    for each; the run's constants come from its :class:`RunStamp`.
    """

    def write(self, rows: pd.DataFrame, prediction: np.ndarray, score: np.ndarray | None) -> None: ...

    def publish(self, finish: FinishFn) -> None: ...

    def abort(self) -> None: ...


def find_duplicate_keys(conn: Connection, table: sa.Table, stamp: RunStamp, keys: Sequence[str]) -> DuplicateKeys:
    """Keys that occur more than once among the rows ``stamp.run_id`` wrote to ``table``.

    Only needed for output tables whose key index is not unique (created before
    it was): the pipeline runs it inside the publish transaction, where the
    run's rows are visible to it and to no one else.
    """
    return duplicate_keys(conn, [table.c[k] for k in keys], [table.c.run_id == stamp.run_id])


_KIND_TYPES: dict[str, sa.types.TypeEngine[Any]] = {
    "text": sa.Text(),
    "integer": sa.BigInteger(),
    "boolean": sa.Boolean(),
    "float": sa.Float(53),
}


def _family(t: sa.types.TypeEngine[Any]) -> str:
    if isinstance(t, sa.Boolean):
        return "boolean"
    if isinstance(t, sa.Integer):
        return "integer"
    if isinstance(t, sa.Float | sa.Numeric):
        return "float"
    if isinstance(t, sa.String):
        return "text"
    return "other"


def prepare_output_table(
    engine: Engine,
    name: str,
    keys: Sequence[tuple[str, sa.types.TypeEngine[Any]]],
    pass_through: Sequence[tuple[str, sa.types.TypeEngine[Any]]],
    prediction_kind: str,
    job: str,
) -> sa.Table:
    """Create the output table (and its view) if missing; check it fits the job if not.

    Returns the job's view of the table: the tool's own column types (e.g. UTC
    timestamps) and the source's types for keys and pass-through columns.
    """
    wanted = output_table(name, keys, pass_through, _KIND_TYPES[prediction_kind])
    ensure_output(engine, wanted, [k for k, _ in keys])
    actual = sa.Table(wanted.name, sa.MetaData(), schema=wanted.schema, autoload_with=engine)
    missing = [c.name for c in wanted.columns if c.name not in actual.c]
    if missing:
        raise SourceError(
            f"job {job!r}: output table {name!r} exists but lacks column(s) {missing}. "
            "Jobs that share an output table must fit its columns: add them "
            "(ALTER TABLE ... ADD COLUMN, as the table owner) or give the job its own "
            "output.table."
        )
    # Tables created before the key index was unique get their duplicate-key
    # check as a query at publish (see pipeline); newer ones by the index.
    wanted.info["unique_keys"] = _has_unique_key_index(actual, wanted)
    have = _family(actual.c.prediction.type)
    fits = have in (prediction_kind, "text", "other") or (
        have == "float" and prediction_kind in ("integer", "boolean")
    )
    if not fits:
        raise SourceError(
            f"job {job!r}: output table {name!r} has a {have} prediction column, but this "
            f"model predicts {prediction_kind} values. Give the job its own output.table."
        )
    return wanted


def _has_unique_key_index(actual: sa.Table, wanted: sa.Table) -> bool:
    key_index = next(ix for ix in wanted.indexes if ix.unique)
    cols = [c.name for c in key_index.columns]
    return any(ix.unique and [c.name for c in ix.columns] == cols for ix in actual.indexes)


def output_frame(
    stamp: RunStamp,
    rows: pd.DataFrame,
    keys: Sequence[str],
    pass_through: Sequence[str],
    prediction: np.ndarray,
    score: np.ndarray | None,
) -> pd.DataFrame:
    """The output rows of one scored chunk, columns in the output table's order."""
    n = len(rows)
    cols: dict[str, Any] = {"job": [stamp.job] * n}
    for k in keys:
        cols[k] = exact_column(rows, k).to_numpy()
    cols.update(
        as_of=[stamp.as_of] * n,
        model_version=[stamp.model_version] * n,
        run_id=np.full(n, stamp.run_id, dtype="int64"),
        scored_at=[stamp.scored_at] * n,
        prediction=prediction,
        score=score if score is not None else np.full(n, np.nan),
    )
    for c in pass_through:
        cols[c] = exact_column(rows, c).to_numpy()
    return pd.DataFrame(cols)


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Plain Python values (None for NULL/NaN/NaT), one dict per row, for executemany."""
    names = list(frame.columns)
    lists = [_python_values(frame[name]) for name in names]
    return [dict(zip(names, vals, strict=True)) for vals in zip(*lists, strict=True)]


def _python_values(series: pd.Series) -> list[Any]:
    if series.dtype.kind == "f":
        arr = series.to_numpy()
        out = arr.astype(object)
        out[~np.isfinite(arr)] = None
        return out.tolist()
    obj = series.astype(object)
    return obj.where(series.notna(), None).tolist()


class _SqliteWriter:
    """Chunks into a TEMP staging table; publish copies them in, in one write transaction.

    Staging holds only what varies per row (keys, prediction, score,
    pass-through columns): the run's constants (job, as_of, model version,
    run_id, scored_at) are added once, by the ``INSERT ... SELECT`` at publish.
    """

    def __init__(self, engine: Engine, table: sa.Table, stamp: RunStamp) -> None:
        self._table = table
        self._stamp = stamp
        self._conn = engine.connect()
        consts = dataclasses.asdict(stamp)
        self._names = [c.name for c in table.columns if c.name not in consts]
        self._staging = sa.Table(
            f"bs_staging_{stamp.run_id}",
            sa.MetaData(),
            *(sa.Column(n, table.c[n].type) for n in self._names),
            prefixes=["TEMPORARY"],
        )
        self._staging.create(self._conn)
        self._conn.commit()
        # What publish inserts: each output column from staging, or the run's
        # constant as a typed bind (SQLAlchemy converts it as for any insert).
        self._publish_select = sa.select(
            *(
                sa.literal(consts[c.name], c.type).label(c.name) if c.name in consts else self._staging.c[c.name]
                for c in table.columns
            )
        )
        # Rows go in as plain tuples through the DBAPI's executemany; SQLAlchemy's
        # per-value conversions are applied column-wise (issue 4: per-row dicts
        # and bind processing dominated).
        dialect = engine.dialect
        self._procs = {n: table.c[n].type.dialect_impl(dialect).bind_processor(dialect) for n in self._names}
        self._insert_sql = str(self._staging.insert().compile(dialect=dialect))

    def _column(self, name: str, rows: pd.DataFrame, prediction: np.ndarray, score: np.ndarray | None) -> Any:
        if name == "score" and score is None:
            return itertools.repeat(None, len(rows))
        if name in ("prediction", "score"):
            values = _python_values(pd.Series(prediction if name == "prediction" else score))
        else:
            values = _python_values(exact_column(rows, name))
        proc = self._procs[name]
        if proc is None:
            return values
        return [None if v is None else proc(v) for v in values]

    def write(self, rows: pd.DataFrame, prediction: np.ndarray, score: np.ndarray | None) -> None:
        if len(rows):
            columns = [self._column(name, rows, prediction, score) for name in self._names]
            if not self._conn.in_transaction():
                self._conn.begin()
            dbapi_conn = self._conn.connection.dbapi_connection
            assert dbapi_conn is not None
            cursor = dbapi_conn.cursor()
            try:
                cursor.executemany(self._insert_sql, zip(*columns, strict=True))
            except self._conn.dialect.loaded_dbapi.Error as exc:
                raise sa.exc.DBAPIError.instance(
                    self._insert_sql, None, exc, self._conn.dialect.loaded_dbapi.Error
                ) from exc
            finally:
                cursor.close()
        self._conn.commit()

    def publish(self, finish: FinishFn) -> None:
        conn = self._conn.execution_options(sqlite_begin="IMMEDIATE")
        with conn.begin():
            delete_replaced(conn, self._table, self._stamp)
            names = [c.name for c in self._table.columns]
            conn.execute(self._table.insert().from_select(names, self._publish_select))
            finish(conn)
        self._close()

    def abort(self) -> None:
        self._close()

    def _close(self) -> None:
        try:
            if self._conn.in_transaction():
                self._conn.rollback()
            self._staging.drop(self._conn, checkfirst=True)
            self._conn.commit()
        except sa.exc.SQLAlchemyError:
            log.debug("dropping the staging table failed; it dies with the connection")
        finally:
            self._conn.close()


class _TransactionWriter:
    """Rows go into the output table inside one transaction that publish commits."""

    def __init__(
        self,
        conn: Connection,
        table: sa.Table,
        stamp: RunStamp,
        keys: Sequence[str],
        pass_through: Sequence[str],
    ) -> None:
        self._table = table
        self._stamp = stamp
        self._keys = list(keys)
        self._pass = list(pass_through)
        self._conn = conn
        self._tx = self._conn.begin()
        delete_replaced(self._conn, table, stamp)  # first, as CopyWriter does

    def write(self, rows: pd.DataFrame, prediction: np.ndarray, score: np.ndarray | None) -> None:
        if len(rows):
            frame = output_frame(self._stamp, rows, self._keys, self._pass, prediction, score)
            self._conn.execute(self._table.insert(), records(frame))

    def publish(self, finish: FinishFn) -> None:
        finish(self._conn)
        self._tx.commit()
        self._conn.close()

    def abort(self) -> None:
        try:
            if self._tx.is_active:
                self._tx.rollback()
        finally:
            self._conn.close()


def delete_replaced(conn: Connection, table: sa.Table, stamp: RunStamp) -> None:
    """Delete the rows a re-run of the same job, as_of and model version replaces.

    Found by run_id, through the ledger (:func:`ledger.replaced_runs`). A run
    into a new as_of finds no such run and touches nothing; a re-run deletes its
    predecessor's rows through ``ix_<table>_run``, one run_id at a time: as
    constants, the planner sizes each from the column's statistics (a join with
    the ledger was planned as a scan of the whole table).
    """
    for run_id in ledger.replaced_runs(conn, stamp.job, stamp.as_of, stamp.model_version, stamp.run_id):
        conn.execute(sa.delete(table).where(table.c.run_id == run_id))


def open_writer(
    engine: Engine,
    table: sa.Table,
    stamp: RunStamp,
    keys: Sequence[str] = (),
    pass_through: Sequence[str] = (),
) -> Writer:
    """The writer for this database.

    PostgreSQL writes with binary COPY (:class:`batch_scorer.storage.sinks.postgres_copy.CopyWriter`)
    unless the output table has a column type the encoder does not know (e.g.
    ``json``, ``interval``); then rows go through SQLAlchemy inserts, in the same
    one-transaction scheme.
    """
    if engine.dialect.name == "sqlite":
        return _SqliteWriter(engine, table, stamp)
    conn = engine.connect()
    try:
        oids = postgres_copy.column_oids(conn, table)
        conn.rollback()
        wanted = {c.name: oids.get(c.name, 0) for c in table.columns}
        odd = sorted(n for n, oid in wanted.items() if not pgcopy.supported(oid))
        if not odd:
            return postgres_copy.CopyWriter(
                conn, table, stamp, wanted, lambda c: delete_replaced(c, table, stamp)
            )
        log.info(
            "output table %s: column(s) %s have types binary COPY does not cover here; "
            "writing with INSERTs", table.name, odd,
        )
        return _TransactionWriter(conn, table, stamp, keys, pass_through)
    except BaseException:
        conn.close()
        raise
