"""Every table the tool owns, defined once.

The ledger (``scoring_runs``), ``rejected_rows``, ``job_locks`` (SQLite's lock
rows), the model registry (``model_versions``, ``model_aliases``,
``model_alias_events``), monitoring (``shadow_comparisons``,
``feature_profiles``, ``drift``, ``model_metrics``) and the per-job output
tables with their shadow twins. Views live in :mod:`batch_scorer.storage.views`;
creating what is missing in :mod:`batch_scorer.storage.ddl`. ``sql/`` holds DDL
generated from here; a test keeps it from drifting.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect

from batch_scorer.names import short_name, split_table_name

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


class RunStatus(enum.StrEnum):
    """The status of a ledger row (docs/tables.md says what each means)."""

    RUNNING = "running"  # started; its rows are invisible until it succeeds
    SUCCEEDED = "succeeded"  # published (``replaced_by`` set: a later run of that as_of replaced its rows)
    FAILED = "failed"  # started and failed; nothing of it is visible
    ABANDONED = "abandoned"  # its process died; found stale by a later run
    INVALID = "invalid"  # could not start: bad model, source or output (exit 2)
    SKIPPED = "skipped"  # not started: another run held the lock, or an upstream job failed
    RETRACTED = "retracted"  # was published; an operator removed its rows (batch-scorer retract)


class Trigger(enum.StrEnum):
    """What started a run."""

    MANUAL = "manual"
    CRON = "cron"
    SCHEDULE = "schedule"
    BACKFILL = "backfill"


def _in(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

scoring_runs = sa.Table(
    "scoring_runs",
    metadata,
    sa.Column("run_id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("job", sa.String(100), nullable=False),
    sa.Column("model_version", sa.String(64)),
    sa.Column("model_sha256", sa.String(64)),
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
    # Part 2: the registered model a run scored, what replaced it, its drift.
    sa.Column("model_name", sa.String(100)),
    sa.Column("model_registry_version", sa.Integer),
    sa.Column("replaced_by", sa.BigInteger),
    sa.Column("drift_status", sa.String(8)),
    sa.CheckConstraint(_in("status", RunStatus), name="ck_scoring_runs_status"),
    sa.CheckConstraint(_in('"trigger"', Trigger), name="ck_scoring_runs_trigger"),
    sa.Index("ix_scoring_runs_job_status", "job", "status"),
    sa.Index("ix_scoring_runs_job_as_of", "job", "as_of", "model_version"),
    # SQLite: a run id is never handed out again, even after the newest ledger rows
    # were deleted by hand (profiles and output rows are keyed by it).
    sqlite_autoincrement=True,
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

# SQLite has no advisory locks: a run holds its job's row here. PostgreSQL
# runs use pg_try_advisory_lock and never touch this table.
job_locks = sa.Table(
    "job_locks",
    metadata,
    sa.Column("job", sa.String(100), primary_key=True),
    sa.Column("run_id", sa.BigInteger),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("acquired_at", UTCDateTime, nullable=False),
)

# The model registry: every host scores the same bytes, checked by sha256
# before they are unpickled.
model_versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("format", sa.String(16), nullable=False),
    sa.Column("sklearn_version", sa.String(32)),
    sa.Column("estimator_class", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("features", sa.Text, nullable=False),  # JSON list of column names
    sa.Column("note", sa.Text),
    sa.Column("registered_at", UTCDateTime, nullable=False),
    sa.Column("registered_by", sa.String(255), nullable=False),
    sa.Column("artifact", sa.LargeBinary, nullable=False),
    sa.UniqueConstraint("name", "sha256", name="uq_model_versions_sha256"),
)

model_aliases = sa.Table(
    "model_aliases",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("alias", sa.String(100), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("set_at", UTCDateTime, nullable=False),
    sa.Column("set_by", sa.String(255), nullable=False),
)

model_alias_events = sa.Table(
    "model_alias_events",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("alias", sa.String(100), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # register | promote | rollback
    sa.Column("from_version", sa.Integer),
    sa.Column("to_version", sa.Integer, nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("by", sa.String(255), nullable=False),
    sa.Column("note", sa.Text),
    sa.Index("ix_model_alias_events_name", "name", "alias", "id"),
)

shadow_comparisons = sa.Table(
    "shadow_comparisons",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.BigInteger, nullable=False, index=True),
    sa.Column("job", sa.String(100), nullable=False),
    sa.Column("challenger", sa.String(100), nullable=False),
    sa.Column("model_version", sa.String(64)),
    sa.Column("rows", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("label_agreement", sa.Float(53)),
    sa.Column("mean_abs_score_diff", sa.Float(53)),
    sa.Column("max_abs_score_diff", sa.Float(53)),
    sa.Column("error", sa.Text),
)

# One profile: the bins of each feature (and the score, and the predicted
# class) with their row counts. profile_id is "run:<run_id>" for a run's own
# profile, "reference:<model name>:<version>" for one given at registration.
feature_profiles = sa.Table(
    "feature_profiles",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("profile_id", sa.String(220), nullable=False),
    sa.Column("run_id", sa.BigInteger),
    sa.Column("job", sa.String(100)),
    sa.Column("model_name", sa.String(100)),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("feature", sa.String(130), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # numeric | categorical
    sa.Column("bin", sa.Integer, nullable=False),
    sa.Column("lower", sa.Float(53)),
    sa.Column("upper", sa.Float(53)),
    sa.Column("category", sa.Text),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Index("ix_feature_profiles_profile", "profile_id", "feature", "bin"),
    sa.Index("ix_feature_profiles_run", "run_id"),
)

drift = sa.Table(
    "drift",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.BigInteger, nullable=False, index=True),
    sa.Column("job", sa.String(100), nullable=False),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("feature", sa.String(130), nullable=False),
    sa.Column("psi_reference", sa.Float(53)),
    sa.Column("psi_previous", sa.Float(53)),
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("reference_profile", sa.String(220)),
    sa.Column("previous_run_id", sa.BigInteger),
    sa.Index("ix_drift_job", "job", "run_id"),
)

model_metrics = sa.Table(
    "model_metrics",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("job", sa.String(100), nullable=False),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),  # champion | challenger
    sa.Column("challenger", sa.String(100)),
    sa.Column("metric", sa.String(32), nullable=False),
    sa.Column("value", sa.Float(53)),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("evaluated_at", UTCDateTime, nullable=False),
    sa.Index("ix_model_metrics_job", "job", "as_of"),
)

TOOL_TABLES = (
    scoring_runs, rejected_rows, job_locks, model_versions, model_aliases, model_alias_events,
    shadow_comparisons, feature_profiles, drift, model_metrics,
)
OUTPUT_CONSTANTS = ("job", "as_of", "model_version", "run_id", "scored_at")
SHADOW_COLUMN = "challenger"


def output_table(
    name: str,
    key_columns: Sequence[tuple[str, sa.types.TypeEngine[Any]]],
    pass_through: Sequence[tuple[str, sa.types.TypeEngine[Any]]],
    prediction_type: sa.types.TypeEngine[Any],
    md: sa.MetaData | None = None,
    shadow: bool = False,
) -> sa.Table:
    """The definition of one predictions table (keys and pass-through vary by job).

    ``shadow`` gives its ``<name>_shadow`` twin: the same columns plus
    ``challenger`` (the alias or version that scored the row).
    """
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
    extra = [SHADOW_COLUMN] if shadow else []
    if shadow:
        cols.append(sa.Column(SHADOW_COLUMN, sa.String(100), nullable=False))
    return sa.Table(
        table,
        md,
        *cols,
        # "Latest per entity" (the view, lookups by key). Unique: a key that
        # occurs twice in one run fails that run's write, at no extra cost.
        sa.Index(short_name("ix", table, "_latest"), "job", *keys, "as_of", "run_id", *extra, unique=True),
        # A run's rows: a re-run deletes the rows it replaces by run_id, taken
        # from the ledger. On run_id alone, appended in order, this B-tree
        # costs a third of what (job, as_of, model_version) did.
        sa.Index(short_name("ix", table, "_run"), "run_id"),
        schema=schema,
    )


def utcnow() -> datetime:
    return datetime.now(UTC)
