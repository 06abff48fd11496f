"""Reading a job's source: probing its columns, then streaming it in chunks.

The column check happens before a row is read. Rows are streamed (binary COPY
into Arrow on PostgreSQL, SQLite's own cursor), never the whole table. A table
source is filtered to the as_of day (cut in the configured time zone, see
:mod:`batch_scorer.storage.sources.days`) and to ``where`` equalities; a query
file gets ``:as_of`` and its parameters bound (see
:mod:`batch_scorer.storage.sources.sqltext`). Values are always bound
parameters: never pasted into SQL by the generic path, and on PostgreSQL's
fast path written as literals built from the value's type alone
(:func:`batch_scorer.storage.sources.postgres_arrow.pg_literal`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from batch_scorer.errors import DatabaseError, SourceError
from batch_scorer.masking import first_line, mask_text
from batch_scorer.names import split_table_name
from batch_scorer.storage.catalog import catalog
from batch_scorer.storage.db import DuplicateKeys, duplicate_keys
from batch_scorer.storage.sources import postgres_arrow
from batch_scorer.storage.sources.days import as_of_day, day_filter
from batch_scorer.storage.sources.spec import SourceSpec
from batch_scorer.storage.sources.sqltext import QueryText, prepare_query

if TYPE_CHECKING:
    from batch_scorer.storage.sources.partitions import Partition

log = logging.getLogger(__name__)

# PostgreSQL type OIDs we map to SQLAlchemy types for query sources.
_PG_OID_TYPES: dict[int, sa.types.TypeEngine[Any]] = {
    16: sa.Boolean(),
    20: sa.BigInteger(),
    21: sa.SmallInteger(),
    23: sa.Integer(),
    700: sa.Float(24),
    701: sa.Float(53),
    1700: sa.Numeric(),
    25: sa.Text(),
    1043: sa.Text(),
    1042: sa.Text(),
    1082: sa.Date(),
    1114: sa.DateTime(),
    1184: sa.DateTime(timezone=True),
}


@dataclass(frozen=True)
class SourceColumns:
    """The source's columns in order, with the SQL type each will have in the output."""

    types: dict[str, sa.types.TypeEngine[Any]]

    @property
    def names(self) -> list[str]:
        return list(self.types)


def needed_columns(spec: SourceSpec, features: Sequence[str]) -> list[str]:
    """Keys, then features, then pass-through columns, each once."""
    out: list[str] = []
    for name in [*spec.key, *features, *spec.pass_through]:
        if name not in out:
            out.append(name)
    return out


def _prepared_query(spec: SourceSpec, postgres: bool) -> QueryText:
    assert spec.query is not None
    try:
        sql = spec.query.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError(
            f"{spec.who}: cannot read query file {spec.query}: {exc.strerror}. "
            "Fix the path (relative paths resolve against the config file's folder)."
        ) from None
    try:
        prepared = prepare_query(sql, postgres)
    except ValueError as exc:
        raise SourceError(f"{spec.who}: query file {spec.query}: {exc}. Close it.") from None
    if not prepared.sql:
        raise SourceError(f"{spec.who}: query file {spec.query} is empty")
    return prepared


@dataclass(frozen=True)
class _Query:
    """A query file's SQL (on lines of its own, so a wrapper never ends up in a comment) and its binds."""

    sql: str
    binds: tuple[sa.BindParameter[Any], ...]

    def clause(self, sql: str | None = None) -> sa.TextClause:
        return sa.text(self.sql if sql is None else sql).bindparams(*self.binds)


def _query(conn: Connection, spec: SourceSpec, as_of: date) -> _Query:
    """The query with ``:as_of`` and ``spec.params`` bound; SourceError for a bind it cannot fill."""
    prepared = _prepared_query(spec, conn.dialect.name == "postgresql")
    values = dict(spec.params)
    if "as_of" in values:
        raise SourceError(f"{spec.who}: a query parameter may not be called 'as_of': "
                          ":as_of is always the run's as_of date. Rename the parameter.")
    missing = [n for n in prepared.binds if n != "as_of" and n not in values]
    if missing:
        raise SourceError(
            f"{spec.who}: query {spec.query} uses parameter(s) "
            f"{', '.join(':' + n for n in missing)}, which have no value: only :as_of and the job's "
            f"parameters ({', '.join(values) or 'none'}) are bound. Give them a value, or fix the query."
        )
    binds = tuple(
        sa.bindparam("as_of", as_of, type_=sa.Date) if n == "as_of" else _bind(values[n], n)
        for n in prepared.binds
    )
    return _Query(f"\n{prepared.sql}\n", binds)


def _wrapped(conn: Connection, spec: SourceSpec, as_of: date, limit: str) -> sa.TextClause:
    # The query file is trusted SQL written by the job's owner; only it is
    # wrapped here, never an identifier from the config.
    query = _query(conn, spec, as_of)
    return query.clause(f"SELECT * FROM ({query.sql}) AS src {limit}")  # noqa: S608


def source_table(conn: Connection, spec: SourceSpec) -> sa.Table:
    """Reflect the job's source table, or raise SourceError if it does not exist."""
    assert spec.table is not None
    schema, name = split_table_name(spec.table)
    try:
        return catalog(conn.engine).table(name, schema, conn)
    except sa.exc.NoSuchTableError:
        raise SourceError(
            f"{spec.who}: {spec.section or 'the'} table {spec.table!r} does not exist in the "
            f"database. Create it, or {spec.fix('table')}."
        ) from None


def probe_columns(conn: Connection, spec: SourceSpec, as_of: date) -> SourceColumns:
    """The source's columns and types, read without fetching the rows.

    Also checks what reading ``as_of`` will need, so a bad as_of or query
    parameter fails here, before a run is recorded: the day's bounds (a
    UsageError out of the date range), the query's binds (a SourceError).
    """
    _check_values(spec)
    if spec.table is not None:
        table = source_table(conn, spec)
        if spec.as_of_column:
            as_of_day(spec.job, as_of, spec.timezone)
        return SourceColumns({c.name: _portable(c.type) for c in table.columns})
    wrapped = _wrapped(conn, spec, as_of, "LIMIT 0")
    try:
        result = conn.execute(wrapped)
    except SQLAlchemyError as exc:
        raise SourceError(
            f"{spec.who}: the {spec.section or 'given'} query {spec.query} failed: "
            f"{mask_text(first_line(exc))}"
        ) from None
    names = list(result.keys())
    description = result.cursor.description if result.cursor is not None else None
    result.close()
    types: dict[str, sa.types.TypeEngine[Any]] = {}
    if conn.dialect.name == "postgresql" and description:
        for name, desc in zip(names, description, strict=True):
            types[name] = _PG_OID_TYPES.get(int(desc[1]), sa.Text())
    else:
        types = _sqlite_query_types(conn, spec, as_of, names)
    return SourceColumns(types)


_SCALARS = (str, int, float, Decimal, date, type(None))  # bool is an int; datetime a date


def _check_values(spec: SourceSpec) -> None:
    """Filter and parameter values must be scalars every database can take as a bound value."""
    for what, pairs in (("where", spec.where), ("query parameter", spec.params)):
        for name, value in pairs:
            if not isinstance(value, _SCALARS):
                raise SourceError(
                    f"job {spec.job!r}: {what} {name!r} has a value of type {type(value).__name__}; "
                    "use a string, a number, a date, a timestamp, true/false or null."
                )


class SqliteAnyType(sa.types.UserDefinedType[Any]):
    """A SQLite column declared without a type: it stores each value as given (an integer
    stays an integer, a float a float, a text its text), as the query that feeds it does."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return ""


# How many of a SQLite query's rows are looked at for its column types.
SQLITE_TYPE_SAMPLE = 1000


def _sqlite_query_types(
    conn: Connection, spec: SourceSpec, as_of: date, names: list[str]
) -> dict[str, sa.types.TypeEngine[Any]]:
    """SQLite reports no result types: each column's type from the storage classes of its
    first :data:`SQLITE_TYPE_SAMPLE` rows (integers: BIGINT; reals, or reals and integers:
    DOUBLE; any text: TEXT). A column with no value there (no rows for that as_of yet, or
    NULLs only) gets no declared type (:class:`SqliteAnyType`), so it keeps what it is given."""
    quote = conn.dialect.identifier_preparer.quote
    query = _query(conn, spec, as_of)
    kinds = ", ".join(f"group_concat(DISTINCT typeof(s.{quote(n)}))" for n in names)
    sample = f"SELECT * FROM ({query.sql}) AS src LIMIT {SQLITE_TYPE_SAMPLE}"  # noqa: S608 - the job's own query
    row = conn.execute(query.clause(f"SELECT {kinds} FROM ({sample}) AS s")).first()  # noqa: S608 - quoted names
    return {name: _sqlite_type(set((row[i] or "").split(",")) - {"null", ""}) for i, name in enumerate(names)}


def _sqlite_type(storage: set[str]) -> sa.types.TypeEngine[Any]:
    if not storage:
        return SqliteAnyType()
    if storage == {"integer"}:
        return sa.BigInteger()
    if storage <= {"integer", "real"}:
        return sa.Float(53)
    return sa.Text()


def _portable(t: sa.types.TypeEngine[Any]) -> sa.types.TypeEngine[Any]:
    """A reflected type, reduced to its generic form so it can be re-created anywhere."""
    try:
        generic = t.as_generic()
    except NotImplementedError:
        return sa.Text()
    if isinstance(generic, sa.types.NullType):
        return sa.Text()
    return generic


def check_columns(spec: SourceSpec, features: Sequence[str], columns: SourceColumns) -> None:
    """Fail before reading rows if the source lacks a column the job or model needs."""
    have = set(columns.names)
    problems = []
    missing_keys = [k for k in spec.key if k not in have]
    if missing_keys:
        problems.append(f"key column(s) {missing_keys}")
    missing_features = [f for f in features if f not in have]
    if missing_features:
        problems.append(f"model feature column(s) {missing_features}")
    missing_pass = [c for c in spec.pass_through if c not in have]
    if missing_pass:
        problems.append(f"pass_through column(s) {missing_pass}")
    if spec.as_of_column and spec.as_of_column not in have:
        problems.append(f"as_of_column {spec.as_of_column!r}")
    missing_where = [c for c, _ in spec.where if c not in have]
    if missing_where:
        problems.append(f"where column(s) {missing_where}")
    if problems:
        raise SourceError(
            f"{spec.who}: {spec.section or 'table'} {spec.describe()} lacks {'; '.join(problems)}. "
            f"It has: {', '.join(columns.names) or '(no columns)'}. Add the columns to the "
            f"{spec.section or 'table'} (or alias them in the query)"
            + (", or fix the job's key/pass_through/where." if spec.section else ".")
        )


def select_rows(
    conn: Connection, spec: SourceSpec, as_of: date, columns: Sequence[str], partition: Partition | None = None
) -> sa.Select[Any]:
    """The statement that reads the job's rows for ``as_of`` (only ``partition``'s, if given)."""
    conditions: list[sa.ColumnElement[bool]] = []
    if spec.table is not None:
        table = source_table(conn, spec)
        cols = table.c
        if spec.as_of_column:
            day = as_of_day(spec.job, as_of, spec.timezone)
            conditions.append(day_filter(cols[spec.as_of_column], conn.dialect.name, day))
    else:
        # The key and where columns are named too, so conditions can use them.
        names = dict.fromkeys([*columns, *spec.key, *(c for c, _ in spec.where)])
        sub = _query(conn, spec, as_of).clause().columns(*(sa.column(c) for c in names)).subquery("src")
        cols = sub.c
    conditions.extend(_equals(cols[c], value) for c, value in spec.where)
    if partition is not None:
        conditions.append(partition.predicate([cols[k] for k in spec.key]))
    return sa.select(*(cols[c] for c in columns)).where(*conditions)


def _equals(col: sa.ColumnElement[Any], value: Any) -> sa.ColumnElement[bool]:
    """``col = value`` with ``value`` bound (NULL: ``IS NULL``)."""
    if value is None:
        return col.is_(None)
    return col == value_bind(value)


def value_bind(value: Any) -> sa.ColumnElement[Any]:
    """A bound value from the config or the data to compare a column with, typed by the value.

    A string stays untyped (not even the compared column's type), so the
    database reads it as it reads a string literal: as the column's type
    (``'5'`` for an integer column), as the PostgreSQL fast path's literals do.
    Other values carry their own type (a date is ISO text on SQLite, a cast on
    psycopg).
    """
    bind = _bind(value)
    return sa.type_coerce(bind, bind.type) if isinstance(value, str) else bind


def _bind(value: Any, name: str | None = None) -> sa.BindParameter[Any]:
    if isinstance(value, str):
        return sa.bindparam(name, value, type_=sa.types.NullType())
    return sa.bindparam(name, value)


def duplicate_source_keys(conn: Connection, spec: SourceSpec, as_of: date) -> DuplicateKeys:
    """Keys that occur more than once in the job's source rows for ``as_of``."""
    sub = select_rows(conn, spec, as_of, spec.key).subquery("src")
    return duplicate_keys(conn, [sub.c[k] for k in spec.key])


def read_chunks(
    conn: Connection,
    spec: SourceSpec,
    as_of: date,
    columns: Sequence[str],
    chunk_size: int,
    features: Sequence[str] = (),
    partition: Partition | None = None,
) -> Iterator[pd.DataFrame]:
    """Yield DataFrames of at most ``chunk_size`` rows, streaming from the database.

    PostgreSQL reads through :mod:`batch_scorer.storage.sources.postgres_arrow` (binary COPY into Arrow,
    on a reader thread; keys and pass-through columns keep their exact types);
    other databases through SQLAlchemy's streaming cursor. With ``partition``
    (from :func:`batch_scorer.storage.sources.partitions.key_partitions`),
    only that partition's rows.
    """
    stmt = select_rows(conn, spec, as_of, columns, partition)
    yield from _stream(conn, spec, stmt, chunk_size, features)


def probe_row(
    conn: Connection, spec: SourceSpec, as_of: date, columns: Sequence[str], features: Sequence[str]
) -> pd.DataFrame:
    """At most one source row for ``as_of`` (the first the database returns), typed as
    :func:`read_chunks` types it: read through the same path. Empty if there is none."""
    stmt = select_rows(conn, spec, as_of, columns).limit(1)
    with contextlib.closing(_stream(conn, spec, stmt, 1, features)) as chunks:
        for chunk in chunks:
            return chunk
    return pd.DataFrame(columns=list(columns))


def _stream(
    conn: Connection, spec: SourceSpec, stmt: sa.Select[Any], chunk_size: int, features: Sequence[str]
) -> Iterator[pd.DataFrame]:
    if conn.dialect.name == "postgresql":
        yield from postgres_arrow.read_chunks(conn, stmt, chunk_size, spec.exact, features, spec.job)
        return
    columns = [c.name for c in stmt.selected_columns]
    # Plain tuples from the DBAPI cursor, with SQLAlchemy's result conversion
    # (dates, booleans, decimals) applied column-wise where a type has one:
    # building a Row object per row cost more than the rest of the read (issue 4).
    processors = [
        c.type.dialect_impl(conn.dialect).result_processor(conn.dialect, None) for c in stmt.selected_columns
    ]
    result: sa.CursorResult[Any] | None = None
    try:
        # No stream_results: SQLAlchemy's streaming strategy pre-fetches rows
        # from the cursor read here; sqlite3's own cursor is lazy already.
        result = conn.execute(stmt)
        cursor = result.cursor
        assert cursor is not None
        while rows := cursor.fetchmany(chunk_size):
            yield _frame(rows, columns, processors)
    except SQLAlchemyError as exc:
        raise DatabaseError(
            f"{spec.who}: reading the {spec.section or 'rows'} failed: {mask_text(first_line(exc))}"
        ) from exc
    except conn.dialect.loaded_dbapi.Error as exc:  # raised by the raw cursor
        raise DatabaseError(f"{spec.who}: reading the {spec.section or 'rows'} failed: {mask_text(str(exc))}") from exc
    finally:
        # A read stopped part-way (an error here, a signal, the generator closed) ends
        # now, not when the error holding this frame is gone: on SQLite a half-read
        # SELECT keeps its read transaction, and a write on the same pooled connection
        # (recording the run failed) then gets "database is locked" at once, without
        # waiting busy_timeout for another writer.
        if result is not None:
            result.close()


def _frame(rows: list[Any], columns: list[str], processors: list[Any]) -> pd.DataFrame:
    if any(processors):
        values = [
            [proc(v) for v in col] if proc is not None else col
            for col, proc in zip(zip(*rows, strict=True), processors, strict=True)
        ]
        rows = list(zip(*values, strict=True))
    return pd.DataFrame.from_records(rows, columns=columns, coerce_float=False)
