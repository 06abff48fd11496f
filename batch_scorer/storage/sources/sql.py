"""Reading a job's source: probing its columns, then streaming it in chunks.

The column check happens before a row is read. Rows are streamed (a
server-side cursor on PostgreSQL, SQLite's own cursor), never the whole table.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from batch_scorer.errors import DatabaseError, SourceError
from batch_scorer.masking import first_line, mask_text
from batch_scorer.names import split_table_name
from batch_scorer.storage.db import DuplicateKeys, duplicate_keys
from batch_scorer.storage.sources import postgres_arrow
from batch_scorer.storage.sources.spec import SourceSpec

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
_AS_OF_PARAM = re.compile(r"(?<![:\w]):as_of\b")


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


def _query_text(spec: SourceSpec) -> str:
    assert spec.query is not None
    try:
        sql = spec.query.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError(
            f"job {spec.job!r}: cannot read source.query file {spec.query}: {exc.strerror}. "
            "Fix the path (relative paths resolve against the config file's folder)."
        ) from None
    # Whole-line comments go: SQLAlchemy would read a ":name" in them as a bind.
    sql = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    sql = sql.strip().rstrip(";").strip()
    if not sql:
        raise SourceError(f"job {spec.job!r}: source.query file {spec.query} is empty")
    return sql


def _query_clause(spec: SourceSpec, as_of: date) -> sa.TextClause:
    sql = _query_text(spec)
    clause = sa.text(sql)
    if _AS_OF_PARAM.search(sql):
        clause = clause.bindparams(sa.bindparam("as_of", as_of, type_=sa.Date))
    return clause


def _wrapped(spec: SourceSpec, as_of: date, limit: str) -> sa.TextClause:
    # The query file is trusted SQL written by the job's owner; only it is
    # wrapped here, never an identifier from the config.
    inner = _query_clause(spec, as_of)
    clause = sa.text(f"SELECT * FROM ({inner.text}) AS src {limit}")  # noqa: S608
    if inner._bindparams:
        clause = clause.bindparams(*inner._bindparams.values())
    return clause


def source_table(conn: Connection, spec: SourceSpec) -> sa.Table:
    """Reflect the job's source table, or raise SourceError if it does not exist."""
    assert spec.table is not None
    schema, name = split_table_name(spec.table)
    try:
        return sa.Table(name, sa.MetaData(), schema=schema, autoload_with=conn)
    except sa.exc.NoSuchTableError:
        raise SourceError(
            f"job {spec.job!r}: source table {spec.table!r} does not exist in the "
            "database. Create it, or fix source.table in the config."
        ) from None


def probe_columns(conn: Connection, spec: SourceSpec, as_of: date) -> SourceColumns:
    """The source's columns and types, read without fetching the rows."""
    if spec.table is not None:
        table = source_table(conn, spec)
        return SourceColumns({c.name: _portable(c.type) for c in table.columns})
    try:
        result = conn.execute(_wrapped(spec, as_of, "LIMIT 0"))
    except SQLAlchemyError as exc:
        raise SourceError(
            f"job {spec.job!r}: the source query {spec.query} failed: "
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


def _sqlite_query_types(
    conn: Connection, spec: SourceSpec, as_of: date, names: list[str]
) -> dict[str, sa.types.TypeEngine[Any]]:
    # SQLite reports no result types; look at one row's values instead.
    row = conn.execute(_wrapped(spec, as_of, "LIMIT 1")).first()
    types: dict[str, sa.types.TypeEngine[Any]] = {}
    for i, name in enumerate(names):
        value = row[i] if row is not None else None
        if isinstance(value, bool):
            types[name] = sa.Boolean()
        elif isinstance(value, int):
            types[name] = sa.BigInteger()
        elif isinstance(value, float):
            types[name] = sa.Float(53)
        else:
            types[name] = sa.Text()
    return types


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
    if problems:
        raise SourceError(
            f"job {spec.job!r}: source {spec.describe()} lacks {'; '.join(problems)}. "
            f"It has: {', '.join(columns.names) or '(no columns)'}. Add the columns to the "
            "source (or alias them in the query), or fix the job's key/pass_through."
        )


def select_rows(conn: Connection, spec: SourceSpec, as_of: date, columns: Sequence[str]) -> sa.Select[Any]:
    """The statement that reads the job's rows for ``as_of``."""
    if spec.table is not None:
        table = source_table(conn, spec)
        stmt = sa.select(*(table.c[c] for c in columns))
        if spec.as_of_column:
            col = table.c[spec.as_of_column]
            # A half-open day range works whether the column holds dates,
            # timestamps or (on SQLite) ISO text, and can use an index.
            stmt = stmt.where(
                col >= sa.bindparam("as_of_lo", as_of, type_=sa.Date),
                col < sa.bindparam("as_of_hi", as_of + timedelta(days=1), type_=sa.Date),
            )
        return stmt
    sub = _query_clause(spec, as_of).columns(*(sa.column(c) for c in columns)).subquery("src")
    return sa.select(*sub.c)


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
) -> Iterator[pd.DataFrame]:
    """Yield DataFrames of at most ``chunk_size`` rows, streaming from the database.

    PostgreSQL reads through :mod:`batch_scorer.storage.sources.postgres_arrow` (binary COPY into Arrow,
    on a reader thread; keys and pass-through columns keep their exact types);
    other databases through SQLAlchemy's streaming cursor.
    """
    stmt = select_rows(conn, spec, as_of, columns)
    if conn.dialect.name == "postgresql":
        yield from postgres_arrow.read_chunks(conn, stmt, chunk_size, spec.exact, features, spec.job)
        return
    # Plain tuples from the DBAPI cursor, with SQLAlchemy's result conversion
    # (dates, booleans, decimals) applied column-wise where a type has one:
    # building a Row object per row cost more than the rest of the read (issue 4).
    processors = [
        c.type.dialect_impl(conn.dialect).result_processor(conn.dialect, None) for c in stmt.selected_columns
    ]
    try:
        # No stream_results: SQLAlchemy's streaming strategy pre-fetches rows
        # from the cursor read here; sqlite3's own cursor is lazy already.
        result = conn.execute(stmt)
        cursor = result.cursor
        assert cursor is not None
        while rows := cursor.fetchmany(chunk_size):
            yield _frame(rows, list(columns), processors)
        result.close()
    except SQLAlchemyError as exc:
        raise DatabaseError(
            f"job {spec.job!r}: reading the source failed: {mask_text(first_line(exc))}"
        ) from exc
    except conn.dialect.loaded_dbapi.Error as exc:  # raised by the raw cursor
        raise DatabaseError(f"job {spec.job!r}: reading the source failed: {mask_text(str(exc))}") from exc


def _frame(rows: list[Any], columns: list[str], processors: list[Any]) -> pd.DataFrame:
    if any(processors):
        values = [
            [proc(v) for v in col] if proc is not None else col
            for col, proc in zip(zip(*rows, strict=True), processors, strict=True)
        ]
        rows = list(zip(*values, strict=True))
    return pd.DataFrame.from_records(rows, columns=columns, coerce_float=False)
