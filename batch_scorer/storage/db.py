"""Engines: building them from a URL, masking passwords, dialect facts.

Whoever calls :func:`create_engine` disposes of the engine (``with
engine_for(cfg) as engine:`` does it for you). One-shot CLI processes use
``NullPool`` so no connection outlives its use.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from batch_scorer.errors import ConfigError, DatabaseError
from batch_scorer.masking import first_line, mask_text, mask_url

log = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_S = 30.0


def normalize_url(url: str | URL) -> URL:
    """Pick the driver so users never have to: ``postgresql://`` means psycopg 3."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError) as exc:  # ValueError: e.g. a port that is not a number
        raise ConfigError(f"database.url is not a valid SQLAlchemy URL: {mask_text(str(exc))}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def create_engine(
    url: str | URL, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S, *, pool_size: int | None = None,
    create: bool = True, **kw: Any,
) -> Engine:
    """Build an engine for a batch-scorer process. The caller must ``dispose()`` it.

    ``pool_size`` None: one-shot use, no pool (``NullPool``); else a pool of that
    size (and as many overflow connections) for a process running many jobs or
    living long (the daemon). ``create=False``: a SQLite file that does not exist
    is an error naming the path, instead of a new empty database.
    """
    parsed = normalize_url(url)
    if pool_size is None:
        kw.setdefault("poolclass", NullPool)
    else:
        kw.setdefault("pool_size", pool_size)
        kw.setdefault("max_overflow", pool_size)
        kw.setdefault("pool_pre_ping", True)
    try:
        if parsed.get_backend_name() == "sqlite":
            _sqlite_file(parsed, create)
            engine = sa.create_engine(parsed, connect_args={"timeout": busy_timeout_s}, **kw)
            _configure_sqlite(engine, busy_timeout_s)
        else:
            engine = sa.create_engine(parsed, connect_args=_postgres_lock_timeout(parsed, busy_timeout_s), **kw)
    except (NoSuchModuleError, ArgumentError) as exc:
        raise ConfigError(
            f"cannot use database URL {mask_url(parsed)}: {exc}. "
            "Supported: sqlite:///path, postgresql://user@host/db, postgresql+psycopg2://..."
        ) from None
    return engine


def _postgres_lock_timeout(url: URL, busy_timeout_s: float) -> dict[str, str]:
    """libpq ``options`` that bound every lock wait of the session (``lock_timeout``) by
    ``busy_timeout_s``: a write blocked by another session's open transaction (a notebook,
    psql, a BI tool) fails after that long instead of waiting for ever. Options the URL
    already has (``?options=-c search_path=...``) are kept."""
    own = url.query.get("options")
    own = own[-1] if isinstance(own, tuple) else own
    timeout = f"-c lock_timeout={max(1, round(busy_timeout_s * 1000))}"
    return {"options": f"{own} {timeout}" if own else timeout}


def _sqlite_file(url: URL, create: bool) -> None:
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return
    path = Path(db).expanduser()
    if create:
        _make_parent_folder(url)
    elif not path.exists():
        raise ConfigError(
            f"the SQLite database file {path} does not exist. Check database.url (a typo in the "
            "path?); `batch-scorer init-db`, `run` or `demo` create it."
        )


def _make_parent_folder(url: URL) -> None:
    # A fresh clone has no data/ folder; SQLite would fail with "unable to open".
    db = url.database
    if db and db != ":memory:" and not db.startswith("file:"):
        with contextlib.suppress(OSError):
            Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(engine: Engine, busy_timeout_s: float) -> None:
    # pysqlite's own transaction handling would defer BEGIN; we issue BEGIN
    # ourselves so that writes take the lock up front (BEGIN IMMEDIATE) and wait
    # busy_timeout for it, instead of failing half-way on lock upgrade.
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        # WAL: readers (BI tools) never block the writer and never see a
        # half-written transaction.
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


@contextlib.contextmanager
def engine_for(
    url: str | URL, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S, *, pool_size: int | None = None,
    create: bool = True,
) -> Iterator[Engine]:
    """Create an engine, check it answers, and dispose of it afterwards."""
    engine = create_engine(url, busy_timeout_s, pool_size=pool_size, create=create)
    try:
        check_connection(engine)
        yield engine
    finally:
        engine.dispose()


def check_connection(engine: Engine) -> None:
    """Open and close one connection; raise DatabaseError naming the masked URL."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except SQLAlchemyError as exc:
        if is_sqlite(engine):
            advice = "Check that the file's folder exists and is writable."
        else:
            advice = (
                "Check that the server is up, the host, port and database name, and that "
                "the password is in the environment variable the URL names."
            )
        raise DatabaseError(
            f"cannot connect to the database at {describe(engine)}: "
            f"{mask_text(first_line(exc))}. {advice}"
        ) from None


def describe(engine: Engine) -> str:
    url = engine.url
    if url.get_backend_name() == "sqlite":
        return f"SQLite file {url.database}"
    host = url.host or "localhost"
    port = f":{url.port}" if url.port else ""
    return f"{mask_url(url)} (host {host}{port})"


def libpq_uri(url: URL) -> str:
    """A libpq connection URI for an engine's URL (any PostgreSQL driver name).

    Query values are %-encoded (libpq does not read ``+`` as a space, as the
    form encoding SQLAlchemy renders would have it: ``options=-ca=1 -cb=2``)."""
    base = url.set(drivername="postgresql", query={}).render_as_string(hide_password=False)
    if not url.query:
        return base
    pairs = [(k, v) for k, vals in url.query.items() for v in ((vals,) if isinstance(vals, str) else vals)]
    return base + "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)


def is_postgres(engine: Engine | sa.Connection) -> bool:
    return engine.dialect.name == "postgresql"


def is_sqlite(engine: Engine | sa.Connection) -> bool:
    return engine.dialect.name == "sqlite"


def begin_write(engine: Engine) -> Any:
    """A write transaction: ``BEGIN IMMEDIATE`` on SQLite, a plain BEGIN elsewhere."""
    if is_sqlite(engine):
        return engine.execution_options(sqlite_begin="IMMEDIATE").begin()
    return engine.begin()


@dataclass(frozen=True)
class DuplicateKeys:
    """Keys that occur more than once: how many, in how many rows, and a few examples."""

    count: int
    rows: int
    examples: list[tuple[dict[str, Any], int]]


def duplicate_keys(
    conn: sa.Connection, keys: Sequence[sa.ColumnElement[Any]], where: Sequence[sa.ColumnElement[bool]] = (),
    limit: int = 5,
) -> DuplicateKeys:
    """Key values that occur more than once among the rows ``keys`` come from.

    Generic SQL (``GROUP BY`` the keys ``HAVING count(*) > 1``) run by the
    database: the keys never come to Python. NULL keys are left out (those rows
    are rejected, not written).
    """
    dup = (
        sa.select(*keys, sa.func.count().label("n"))
        .where(*where, *(k.is_not(None) for k in keys))
        .group_by(*keys)
        .having(sa.func.count() > 1)
    )
    sub = dup.subquery()
    count, rows = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(sub.c.n), 0)).select_from(sub)
    ).one()
    examples = []
    if count:
        for row in conn.execute(dup.order_by(*keys).limit(limit)):
            values = tuple(row)
            examples.append(({k.name: values[i] for i, k in enumerate(keys)}, int(values[-1])))
    return DuplicateKeys(int(count), int(rows or 0), examples)


def driver_rows(conn: sa.Connection, stmt: sa.Select[Any]) -> list[tuple[Any, ...]]:
    """The rows of a SELECT as the driver's own tuples, for a large read of plain columns.

    SQLAlchemy builds a ``Row`` per row; for the ~100,000 profile rows a fleet's planning
    reads, that was half the read's time (PostgreSQL 0.3 of 0.7 s, SQLite 0.1 of 0.25 s).
    The statement still runs through SQLAlchemy (its events, its errors); only the fetch
    is the cursor's. For columns whose type converts nothing on the way out (no result
    processor); otherwise SQLAlchemy's rows."""
    result = conn.execute(stmt)
    dialect = conn.dialect
    cursor = getattr(result, "cursor", None)
    plain = all(c.type.dialect_impl(dialect).result_processor(dialect, _coltype(dialect, c.type)) is None
                for c in stmt.selected_columns)
    if cursor is None or not plain or type(result) is not sa.CursorResult:
        return [tuple(row) for row in result]
    try:
        return list(cursor.fetchall())
    finally:
        result.close()


def _coltype(dialect: sa.Dialect, type_: sa.types.TypeEngine[Any]) -> int | None:
    """The type code a driver reports for a column (PostgreSQL's float types ask for it)."""
    if dialect.name == "postgresql" and isinstance(type_, sa.Float):
        return 701  # float8: psycopg returns a Python float, nothing to convert
    return None


@dataclass(frozen=True)
class TableRows:
    """Rows for one table as tuples under ``names`` (a run's few hundred profile and drift
    rows: no dict per row on the way to the driver)."""

    names: tuple[str, ...]
    values: list[tuple[Any, ...]]

    @classmethod
    def of(cls, rows: Sequence[Mapping[str, Any]]) -> TableRows:
        """Dicts with the same keys (the first row's) as tuples."""
        names = tuple(rows[0]) if rows else ()
        if any(len(r) != len(names) for r in rows):
            raise ValueError("rows with different keys")
        return cls(names, [tuple(r[n] for n in names) for r in rows])

    def __len__(self) -> int:
        return len(self.values)


def insert_rows(conn: sa.Connection, table: sa.Table, rows: TableRows) -> None:
    """INSERT ``rows`` into ``table`` through the driver's own ``executemany``, with
    SQLAlchemy's conversion of each value (its bind processors) applied column by column.

    ``conn.execute(table.insert(), dicts)`` builds a parameter set per row: for the ~250
    profile and drift rows a run publishes on SQLite that was most of their insert's time.
    A driver with named parameters (psycopg) gets SQLAlchemy's own executemany."""
    if not rows.values:
        return
    dialect = conn.dialect
    sql, order = insert_sql(dialect, table, rows.names)
    if not order:
        conn.execute(table.insert(), [dict(zip(rows.names, v, strict=True)) for v in rows.values])
        return
    at = {n: i for i, n in enumerate(rows.names)}
    columns = []
    for name in order:
        values = [v[at[name]] for v in rows.values]
        proc = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        columns.append(values if proc is None else [None if v is None else proc(v) for v in values])
    executemany(conn, sql, list(zip(*columns, strict=True)))


def executemany(conn: sa.Connection, sql: str, params: Sequence[tuple[Any, ...]]) -> None:
    """The driver's ``executemany`` of compiled SQL on ``conn``, in its transaction (begun if
    none is); a driver error is raised as SQLAlchemy's."""
    if not conn.in_transaction():
        conn.begin()
    dbapi_conn = conn.connection.dbapi_connection
    assert dbapi_conn is not None
    cursor = dbapi_conn.cursor()
    try:
        cursor.executemany(sql, params)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise sa.exc.DBAPIError.instance(sql, None, exc, conn.dialect.loaded_dbapi.Error) from exc
    finally:
        cursor.close()


def insert_sql(dialect: sa.Dialect, table: sa.Table, names: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """``INSERT INTO table (names) VALUES (...)`` compiled for ``dialect``, and the column of
    each positional parameter (empty for a named paramstyle). Compiled once per table name
    and columns: a fleet's runs insert into the same tables with the same columns (each
    plan has a Table object of its own)."""
    key = (dialect, table.schema, table.name, tuple(names))
    found = _INSERTS.get(key)
    if found is None:
        if len(_INSERTS) >= _INSERTS_MAX:  # a daemon's reloads bring new engines: stay bounded
            _INSERTS.clear()
        compiled = table.insert().compile(dialect=dialect, column_keys=list(names))
        found = _INSERTS[key] = (compiled.string, tuple(compiled.positiontup or ()))
    return found


_INSERTS: dict[tuple[Any, ...], tuple[str, tuple[str, ...]]] = {}
_INSERTS_MAX = 1_000
