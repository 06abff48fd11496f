"""Every table and view the tool owns, defined once.

``scoring_runs`` (the ledger), ``rejected_rows``, ``job_locks`` (SQLite's lock
rows), and the output tables with their ``<table>_latest`` views. ``sql/`` holds
DDL generated from here (``render_ddl``); a test keeps it from drifting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import SQLAlchemyError

from batch_scorer.errors import DatabaseError
from batch_scorer.masking import first_line
from batch_scorer.names import latest_view_name, short_name, split_table_name
from batch_scorer.storage.db import begin_write
from batch_scorer.storage.retry import is_insufficient_privilege

log = logging.getLogger(__name__)


_SQLITE_UTC_FORMAT = (
    "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d+00:00"
)
_SQLITE_UTC_REGEXP = r"(\d+)-(\d+)-(\d+) (\d+):(\d+):(\d+)(?:\.(\d+))?(?:\+00:00|Z)?"


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps: ``timestamptz`` on PostgreSQL, ISO text with
    ``+00:00`` on SQLite; always returned as aware datetimes."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(
                sqlite.DATETIME(storage_format=_SQLITE_UTC_FORMAT, regexp=_SQLITE_UTC_REGEXP)
            )
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

scoring_runs = sa.Table(
    "scoring_runs",
    metadata,
    sa.Column("run_id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("job", sa.String(100), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("model_sha256", sa.String(64), nullable=False),
    sa.Column("model_sklearn_version", sa.String(32)),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("rows_read", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("rows_scored", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("rows_rejected", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("output_table", sa.String(130)),
    sa.Column("error", sa.Text),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.CheckConstraint(
        "status IN ('running', 'succeeded', 'failed', 'abandoned')", name="ck_scoring_runs_status"
    ),
    sa.CheckConstraint(
        "\"trigger\" IN ('manual', 'cron', 'schedule', 'backfill')", name="ck_scoring_runs_trigger"
    ),
    sa.Index("ix_scoring_runs_job_status", "job", "status"),
    sa.Index("ix_scoring_runs_job_as_of", "job", "as_of", "model_version"),
)

rejected_rows = sa.Table(
    "rejected_rows",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.BigInteger, nullable=False, index=True),
    sa.Column("job", sa.String(100), nullable=False),
    sa.Column("key", sa.Text),
    sa.Column("reason", sa.Text, nullable=False),
)

# SQLite has no advisory locks: a run holds its job's row here (DESIGN.md).
# PostgreSQL runs use pg_try_advisory_lock and never touch this table.
job_locks = sa.Table(
    "job_locks",
    metadata,
    sa.Column("job", sa.String(100), primary_key=True),
    sa.Column("run_id", sa.BigInteger),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("acquired_at", UTCDateTime, nullable=False),
)

TOOL_TABLES = (scoring_runs, rejected_rows, job_locks)


def output_table(
    name: str,
    key_columns: Sequence[tuple[str, sa.types.TypeEngine[Any]]],
    pass_through: Sequence[tuple[str, sa.types.TypeEngine[Any]]],
    prediction_type: sa.types.TypeEngine[Any],
    md: sa.MetaData | None = None,
) -> sa.Table:
    """The definition of one predictions table (keys and pass-through vary by job)."""
    schema, table = split_table_name(name)
    md = md if md is not None else sa.MetaData()
    keys = [k for k, _ in key_columns]
    cols: list[sa.Column[Any]] = [sa.Column("job", sa.String(100), nullable=False)]
    cols += [sa.Column(k, t) for k, t in key_columns]
    cols += [
        sa.Column("as_of", sa.Date, nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("scored_at", UTCDateTime, nullable=False),
        sa.Column("prediction", prediction_type),
        sa.Column("score", sa.Float(53)),
    ]
    cols += [sa.Column(c, t) for c, t in pass_through]
    return sa.Table(
        table,
        md,
        *cols,
        # "Latest per entity" (the view, lookups by key). Unique: a key that
        # occurs twice in one run fails that run's write, at no extra cost.
        sa.Index(short_name("ix", table, "_latest"), "job", *keys, "as_of", "run_id", unique=True),
        # A run's rows: a re-run deletes the rows it replaces by run_id, taken
        # from the ledger. On run_id alone, appended in order, this B-tree
        # costs a third of what (job, as_of, model_version) did (issue 4).
        sa.Index(short_name("ix", table, "_run"), "run_id"),
        schema=schema,
    )


def latest_view_select(table: sa.Table, keys: Sequence[str]) -> sa.Select[Any]:
    """Per job and entity: the latest as_of, and within it the latest run."""
    rn = (
        sa.func.row_number()
        .over(
            partition_by=[table.c.job, *(table.c[k] for k in keys)],
            order_by=[table.c.as_of.desc(), table.c.run_id.desc()],
        )
        .label("_rn")
    )
    ranked = sa.select(*table.c, rn).subquery("ranked")
    return sa.select(*(ranked.c[c.name] for c in table.c)).where(ranked.c._rn == 1)


def create_view_sql(dialect: Dialect, view_name: str, select: sa.Select[Any]) -> str:
    """``CREATE VIEW`` text with a dialect-quoted name (never an f-string identifier)."""
    schema, name = split_table_name(view_name)
    prep = dialect.identifier_preparer
    quoted = prep.quote(name) if schema is None else f"{prep.quote_schema(schema)}.{prep.quote(name)}"
    body = select.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    return f"CREATE VIEW {quoted} AS {body}"


def create_tool_tables(bind: Engine | Connection) -> None:
    """Create the ledger, rejected_rows and job_locks tables if missing (idempotent)."""
    _create_all(bind, metadata, TOOL_TABLES)


def _create_all(bind: Engine | Connection, md: sa.MetaData, tables: Iterable[sa.Table]) -> None:
    tables = list(tables)
    try:
        insp = sa.inspect(bind)
        if all(insp.has_table(t.name, schema=t.schema) for t in tables):
            return  # the common case: a read, no write lock taken
        if isinstance(bind, Engine):
            # BEGIN IMMEDIATE on SQLite: a deferred transaction that has read the
            # schema and then upgrades to write gets SQLITE_BUSY at once (no busy
            # wait) when another process holds the write lock at that moment.
            with begin_write(bind) as conn:
                md.create_all(conn, tables=tables, checkfirst=True)
        else:
            md.create_all(bind, tables=tables, checkfirst=True)
    except SQLAlchemyError as exc:
        # Two processes creating the same table at once: the loser's CREATE
        # fails; what matters is that the table now exists.
        insp = sa.inspect(bind)
        if not all(insp.has_table(t.name, schema=t.schema) for t in tables):
            if is_insufficient_privilege(exc):
                raise _needs_init_db(bind, [t.fullname for t in tables], exc) from exc
            raise


def _needs_init_db(bind: Engine | Connection, names: Sequence[str], exc: Exception) -> DatabaseError:
    # A least-privilege scorer role (sql/roles_postgresql.sql) may not CREATE:
    # the schema owner creates everything once with `batch-scorer init-db`.
    user = bind.engine.url.username or "the database user"
    them = "it" if len(names) == 1 else "them"
    exist = "does" if len(names) == 1 else "do"
    return DatabaseError(
        f"{', '.join(names)} {exist} not exist and {user} may not create {them} "
        f"(permission denied: {first_line(exc)}). Tables and views are created by "
        "`batch-scorer init-db` run as the schema owner (README: Least privilege); "
        "run it, or re-run it after adding a job with a new output table."
    )


def ensure_output(bind: Engine, table: sa.Table, keys: Sequence[str]) -> None:
    """Create an output table, its indexes and its ``_latest`` view if missing."""
    _create_all(bind, table.metadata, [table])
    full = table.name if table.schema is None else f"{table.schema}.{table.name}"
    view = latest_view_name(full)
    schema, view_table = split_table_name(view)
    insp = sa.inspect(bind)
    if view_table in insp.get_view_names(schema=schema):
        return
    sql = create_view_sql(bind.dialect, view, latest_view_select(table, keys))
    try:
        with begin_write(bind) as conn:
            conn.exec_driver_sql(sql)
    except SQLAlchemyError as exc:
        if view_table not in sa.inspect(bind).get_view_names(schema=schema):
            if is_insufficient_privilege(exc):
                raise _needs_init_db(bind, [view], exc) from exc
            raise


def render_ddl(dialect_name: str) -> str:
    """The DDL of the tool's tables and the default predictions table, for DBAs.

    The example predictions table is keyed by ``customer_id BIGINT``; a real
    deployment's key and pass-through columns follow its jobs' sources.
    """
    dialect: Dialect = postgresql.dialect() if dialect_name == "postgresql" else sqlite.dialect()
    md = sa.MetaData()
    parts = [f"-- Generated by batch_scorer.schema.render_ddl({dialect_name!r}); do not edit.\n"]
    tables = list(TOOL_TABLES)
    example = output_table(
        "predictions", [("customer_id", sa.BigInteger())], [], sa.BigInteger(), md=md
    )
    for table in [*tables, example]:
        parts.append(str(sa.schema.CreateTable(table).compile(dialect=dialect)).strip() + ";\n")
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            parts.append(str(sa.schema.CreateIndex(index).compile(dialect=dialect)).strip() + ";\n")
    parts.append(
        create_view_sql(dialect, "predictions_latest", latest_view_select(example, ["customer_id"]))
        + ";\n"
    )
    return "\n".join(parts)


def utcnow() -> datetime:
    return datetime.now(UTC)
