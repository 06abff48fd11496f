"""Creating what is missing: the tool's tables and views, output tables and their views.

Everything is idempotent and cheap when nothing is missing (one read of the
catalogue, no write lock). Two processes creating the same object at once is
fine: the loser's CREATE fails and what matters is that the object exists. A
least-privilege scorer role may not create anything: then the error names
``batch-scorer init-db``, which the schema owner runs once (docs/operations.md).

Ledgers made by earlier versions are upgraded in place (:func:`upgrade_ledger`):
new columns added, the status check widened.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import SQLAlchemyError

from batch_scorer.errors import DatabaseError, SourceError
from batch_scorer.masking import first_line
from batch_scorer.names import split_table_name
from batch_scorer.storage.catalog import Catalog, catalog
from batch_scorer.storage.db import begin_write, is_sqlite
from batch_scorer.storage.retry import is_insufficient_privilege
from batch_scorer.storage.schema import TOOL_TABLES, RunStatus, metadata, output_table, scoring_runs
from batch_scorer.storage.views import create_view_sql, output_view_names, output_views, tool_views

log = logging.getLogger(__name__)


def create_tool_tables(engine: Engine) -> None:
    """Create the tool's tables and views if missing, and upgrade an older ledger."""
    _create_tables(engine, metadata, TOOL_TABLES)
    catalog(engine).remember("ledger upgraded", lambda: upgrade_ledger(engine) or True)
    views = tool_views()
    _create_views(engine, list(views), lambda: views)


def ensure_output(engine: Engine, table: sa.Table, keys: Sequence[str], classifier: bool) -> None:
    """Create an output table, its indexes and its ``_latest``/``_daily`` views if missing."""
    _create_tables(engine, table.metadata, [table])
    # The view definitions are built only when one is missing (a fleet's runs find them).
    _create_views(engine, output_view_names(table), lambda: output_views(table, keys, classifier))


def ensure_table(engine: Engine, table: sa.Table) -> None:
    """Create one table (e.g. an output's ``_shadow`` twin) if missing."""
    _create_tables(engine, table.metadata, [table])


def missing_objects(engine: Engine, table: sa.Table, keys: Sequence[str], classifier: bool) -> list[str]:
    """Which of an output table and its views do not exist yet (read-only)."""
    known = catalog(engine)
    missing = [] if known.has_table(table.name, table.schema) else [_full(table)]
    missing.extend(name for name in output_view_names(table) if not _view_exists(known, name))
    return missing


def _full(table: sa.Table) -> str:
    return table.name if table.schema is None else f"{table.schema}.{table.name}"


def _create_tables(engine: Engine, md: sa.MetaData, tables: Iterable[sa.Table]) -> None:
    tables = list(tables)

    known = catalog(engine)

    def exists() -> bool:
        return all(known.has_table(t.name, t.schema) for t in tables)

    # BEGIN IMMEDIATE on SQLite: a deferred transaction that has read the
    # schema and then upgrades to write gets SQLITE_BUSY at once (no busy
    # wait) when another process holds the write lock at that moment.
    if _create(engine, exists, lambda conn: md.create_all(conn, tables=tables, checkfirst=True),
               [_full(t) for t in tables]):
        for t in tables:
            known.created(t.name, t.schema)


def check_view_names(engine: Engine, table: sa.Table, keys: Sequence[str], classifier: bool) -> None:
    """Refuse (exit 2) an output table whose view names are taken by tables of someone else's."""
    _check_free(engine, output_view_names(table))


def _check_free(engine: Engine, names: Sequence[str]) -> None:
    known = catalog(engine)
    for name in names:
        if not _view_exists(known, name) and _is_table(engine, name):
            raise SourceError(
                f"the view {name} cannot be created: a table of that name already exists in the "
                "database (a name batch-scorer derives from an output table). Rename that table, "
                "or give the job another output.table."
            )


def _create_views(engine: Engine, names: Sequence[str], selects: Callable[[], dict[str, sa.Select[Any]]]) -> None:
    """Create the views ``names`` that are missing, from ``selects()`` (called only then)."""
    known = catalog(engine)
    _check_free(engine, names)
    missing = [n for n in names if not _view_exists(known, n)]
    if not missing:
        return
    views = selects()
    for name in missing:
        schema, view = split_table_name(name)
        sql = create_view_sql(engine.dialect, name, views[name])
        if _create(engine, lambda v=view, s=schema: known.has_view(v, s),
                   lambda conn, sql=sql: conn.exec_driver_sql(sql), [name]):
            known.created(view, schema, view=True)


def _view_exists(known: Catalog, name: str) -> bool:
    schema, view = split_table_name(name)
    return known.has_view(view, schema)


def _is_table(engine: Engine, name: str) -> bool:
    schema, table = split_table_name(name)
    return catalog(engine).has_table(table, schema)


def _create(engine: Engine, exists: Callable[[], bool], create: Callable[[Connection], Any],
            names: Sequence[str]) -> bool:
    """Create what ``exists()`` says is missing; True if this call created it."""
    if exists():
        return False
    try:
        with begin_write(engine) as conn:
            create(conn)
        return True
    except SQLAlchemyError as exc:
        catalog(engine).clear()  # another process may have made it meanwhile: ask again
        if exists():
            return False
        if is_insufficient_privilege(exc):
            raise needs_init_db(engine, names, exc) from exc
        raise


def needs_init_db(engine: Engine, names: Sequence[str], exc: Exception) -> DatabaseError:
    """The error for a role that may not create what a run needs."""
    user = engine.url.username or "the database user"
    them = "it" if len(names) == 1 else "them"
    exist = "does" if len(names) == 1 else "do"
    return DatabaseError(
        f"{', '.join(names)} {exist} not exist and {user} may not create {them} "
        f"(permission denied: {first_line(exc)}). Tables and views are created by "
        "`batch-scorer init-db` run as the schema owner (docs/operations.md, least "
        "privilege); run it, or re-run it after adding a job with a new output table."
    )


def refresh_statistics(engine: Engine, name: str) -> None:
    """PostgreSQL: ``ANALYZE`` a table another job of this command just published into.

    A job that runs ``after:`` others often reads what they published seconds ago,
    before autovacuum has analysed it; planned from a new table's missing
    statistics (estimates of one row) a join of two 20,000-row outputs ran as a
    nested loop for 40 s instead of 40 ms. A role that does not own the table
    (the least-privilege scorer) gets a warning from the server and nothing else.
    """
    if engine.dialect.name != "postgresql":
        return
    schema, table = split_table_name(name)
    prep = engine.dialect.identifier_preparer
    quoted = prep.quote(table) if schema is None else f"{prep.quote_schema(schema)}.{prep.quote(table)}"
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"ANALYZE {quoted}")
    except SQLAlchemyError as exc:
        log.debug("ANALYZE %s skipped: %s", name, first_line(exc))


# ------------------------------------------------------------------ upgrade


def upgrade_ledger(engine: Engine) -> None:
    """Bring a ``scoring_runs`` made by an earlier version up to today's definition:
    add the columns it lacks, allow the part-2 statuses and NULL model columns."""
    missing = _missing_columns(engine)
    stale_check = _status_check_is_stale(engine)
    if not missing and not stale_check:
        return
    log.warning("upgrading the scoring_runs ledger (%s)", ", ".join(missing) or "status values")
    try:
        with begin_write(engine) as conn:
            if is_sqlite(engine):
                _rebuild_sqlite_ledger(conn) if stale_check else _add_columns(conn, missing)
            else:
                _add_columns(conn, missing)
                if stale_check:
                    _widen_postgres_ledger(conn)
    except SQLAlchemyError as exc:
        if is_insufficient_privilege(exc):
            raise needs_init_db(engine, ["the upgraded scoring_runs"], exc) from exc
        raise


def _missing_columns(engine: Engine) -> list[str]:
    have = {c["name"] for c in sa.inspect(engine).get_columns("scoring_runs")}
    return [c.name for c in scoring_runs.columns if c.name not in have]


def _status_check_is_stale(engine: Engine) -> bool:
    with engine.connect() as conn:
        if is_sqlite(engine):
            sql = conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE name = 'scoring_runs'")).scalar()
        else:
            sql = conn.execute(sa.text(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conname = 'ck_scoring_runs_status' AND conrelid = 'scoring_runs'::regclass"
            )).scalar()
    return sql is not None and f"'{RunStatus.RETRACTED.value}'" not in str(sql)


def _add_columns(conn: Connection, names: Sequence[str]) -> None:
    prep = conn.dialect.identifier_preparer
    for name in names:
        col = scoring_runs.c[name]
        ddl = col.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE scoring_runs ADD COLUMN {prep.quote(name)} {ddl}")


def _widen_postgres_ledger(conn: Connection) -> None:
    check = next(c for c in scoring_runs.constraints if c.name == "ck_scoring_runs_status")
    conn.exec_driver_sql("ALTER TABLE scoring_runs DROP CONSTRAINT IF EXISTS ck_scoring_runs_status")
    conn.exec_driver_sql(f"ALTER TABLE scoring_runs ADD CONSTRAINT ck_scoring_runs_status CHECK ({check.sqltext})")
    for name in ("model_version", "model_sha256"):
        conn.exec_driver_sql(f"ALTER TABLE scoring_runs ALTER COLUMN {name} DROP NOT NULL")


def _rebuild_sqlite_ledger(conn: Connection) -> None:
    """SQLite cannot alter a CHECK: copy the rows into today's table (its documented way)."""
    have = [r[1] for r in conn.exec_driver_sql("PRAGMA table_info(scoring_runs)")]
    conn.exec_driver_sql("ALTER TABLE scoring_runs RENAME TO scoring_runs_upgrading")
    for index in scoring_runs.indexes:
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {index.name}")
    metadata.create_all(conn, tables=[scoring_runs])
    cols = ", ".join(f'"{c}"' for c in have)
    conn.exec_driver_sql(f"INSERT INTO scoring_runs ({cols}) SELECT {cols} FROM scoring_runs_upgrading")  # noqa: S608 - catalogue names
    conn.exec_driver_sql("DROP TABLE scoring_runs_upgrading")


# --------------------------------------------------------------------- DDL


def render_ddl(dialect_name: str) -> str:
    """The DDL of the tool's tables and views and an example predictions table, for DBAs.

    The example predictions table is keyed by ``customer_id BIGINT``; a real
    deployment's key and pass-through columns follow its jobs' sources.
    """
    dialect: Dialect = postgresql.dialect() if dialect_name == "postgresql" else sqlite.dialect()
    md = sa.MetaData()
    parts = [f"-- Generated by batch_scorer.storage.ddl.render_ddl({dialect_name!r}); do not edit.\n"]
    example = output_table("predictions", [("customer_id", sa.BigInteger())], [], sa.BigInteger(), md=md)
    shadow = output_table("predictions_shadow", [("customer_id", sa.BigInteger())], [], sa.BigInteger(),
                          md=md, shadow=True)
    for table in [*TOOL_TABLES, example, shadow]:
        parts.append(str(sa.schema.CreateTable(table).compile(dialect=dialect)).strip() + ";\n")
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            parts.append(str(sa.schema.CreateIndex(index).compile(dialect=dialect)).strip() + ";\n")
    views = {**tool_views(), **output_views(example, ["customer_id"], classifier=True)}
    parts += [create_view_sql(dialect, name, select) + ";\n" for name, select in views.items()]
    return "\n".join(parts)
