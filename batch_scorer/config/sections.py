"""The sections of ``config.yaml`` other than jobs: one frozen pydantic model each.

Every field's docstring (kept by pydantic as the field's ``description``) says
what the key means and its default; the configuration reference is written
from them.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from batch_scorer.config.environment import first_unset_variable, unset_variable_message
from batch_scorer.errors import ConfigError

SUPPORTED_DATABASES = "sqlite:///path, postgresql://user@host/db, postgresql+psycopg2://user@host/db"
# Backend -> drivers the tool works with ("" = SQLAlchemy's default driver).
_SUPPORTED_DRIVERS = {
    "sqlite": ("", "pysqlite"),
    "postgresql": ("", "psycopg", "psycopg2"),
    "postgres": ("",),  # an old spelling; the engine maps it to postgresql+psycopg
}


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def url_backend(url: str) -> str | None:
    """The backend name of a database URL (``sqlite``, ``postgresql``), or None if unparsable."""
    try:
        return make_url(url).get_backend_name()
    except (ArgumentError, ValueError):
        return None


class DatabaseConfig(Strict):
    """Where predictions, the ledger and the tool's tables live (``database:``)."""

    url: str = "sqlite:///data/batch_scorer.db"
    """SQLAlchemy URL of the database. Default ``sqlite:///data/batch_scorer.db``
    (relative SQLite paths resolve against the config file's folder). Supported:
    sqlite:///path, postgresql://user@host/db, postgresql+psycopg2://...; any
    other backend is refused at load. ``${VAR}`` expands from the environment; an
    unset variable here does not fail the load (commands that never connect work
    without it): the text stays unexpanded and :meth:`require_url` raises when a
    command needs the database."""
    busy_timeout_seconds: float = Field(default=30.0, gt=0)
    """How long a write waits for another session's lock before it fails (exit 1): on
    SQLite the file's write lock, on PostgreSQL every lock wait of the tool's sessions
    (``lock_timeout``; e.g. a notebook's open transaction on the output table). Default
    30.0; > 0."""
    retries: int = Field(default=2, ge=0, le=10)
    """Transient errors (connection lost, serialization failure, deadlock) re-run the
    whole run up to this many more times. Default 2; 0..10."""
    retry_backoff_seconds: float = Field(default=2.0, ge=0, le=300)
    """Wait before the first retry; each further retry waits twice as long (at most 60 s),
    plus up to 25% random jitter. Default 2.0; 0..300."""

    @field_validator("url")
    @classmethod
    def _supported(cls, value: str) -> str:
        if first_unset_variable(value) is not None:
            return value  # require_url reports it when a command connects
        try:
            parsed = make_url(value)
        except (ArgumentError, ValueError):
            return value  # resolve_sqlite_url, after validation, says what is wrong with it
        # The driver is read from the text: get_driver_name() would import the dialect.
        backend, _, driver = parsed.drivername.partition("+")
        if driver not in _SUPPORTED_DRIVERS.get(backend, ()):
            raise ValueError(
                f"batch-scorer does not support the database {parsed.drivername!r}; "
                f"supported: {SUPPORTED_DATABASES}"
            )
        return value

    def require_url(self) -> str:
        """The URL, for a command that connects; ConfigError if it names an unset ``${VAR}``."""
        name = first_unset_variable(self.url)
        if name is not None:
            raise ConfigError(unset_variable_message("database.url", name))
        return self.url


class MonitorConfig(Strict):
    """Drift monitoring of a job's features and scores (``monitor:`` on a job, ``defaults.monitor``)."""

    enabled: bool = True
    """Compute drift (PSI) for the job's runs. Default true."""
    bins: int = Field(default=10, ge=2, le=100)
    """Number of bins the reference distribution is cut into. Default 10; 2..100."""
    warn_psi: float = Field(default=0.1, gt=0)
    """PSI at or above which a feature is reported as drifting (warning). Default 0.1; > 0."""
    alert_psi: float = Field(default=0.25, gt=0)
    """PSI at or above which drift is an alert (see on_alert). Default 0.25; > 0 and >= warn_psi."""
    on_alert: Literal["warn", "fail"] = "warn"
    """What an alert does: ``warn`` logs it and the run goes on; ``fail`` makes the run
    fail. Default warn."""

    @model_validator(mode="after")
    def _ordered(self) -> MonitorConfig:
        if self.warn_psi > self.alert_psi:
            raise ValueError(
                f"warn_psi {self.warn_psi} must be <= alert_psi {self.alert_psi} "
                "(a warning comes before an alert)"
            )
        return self


class Defaults(Strict):
    """Values jobs take when they do not set their own (``defaults:``)."""

    chunk_size: int = Field(default=50_000, ge=1)
    """Rows read, checked and scored at a time. Default 50000; >= 1. A job's chunk_size wins."""
    max_rejected_fraction: float = Field(default=0.01, ge=0, le=1)
    """A run fails when more than this fraction of its rows is rejected. Default 0.01; 0..1.
    A job's max_rejected_fraction wins."""
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    """Monitoring settings every job inherits; a job's ``monitor:`` overrides them key by key."""
    parallel_jobs: int = Field(default=10, ge=1, le=64)
    """How many jobs of one command (run several jobs, --all, a matrix) run at the same
    time; jobs that read the same rows read them once only if they run at the same time,
    so this is also the most jobs one read serves. Default 10; 1..64."""
    future_days: int = Field(default=1, ge=0, le=366)
    """An as_of later than today (in ``timezone``) plus this many days is refused unless
    the caller allows it explicitly. Default 1; 0..366."""


class SchedulerConfig(Strict):
    """Settings of the ``batch-scorer schedule`` daemon (docs/operations.md, "The scheduler daemon")."""

    catch_up_hours: float = Field(default=24.0, ge=0, le=24 * 366)
    """On start, the latest fire of each job within this many hours is run once if the
    ledger shows no succeeded run for it (catch-up after downtime). Default 24.0; 0..8784."""
    stop_timeout_seconds: float = Field(default=60.0, ge=0, le=24 * 3600)
    """On SIGTERM/SIGINT a run in progress may finish for this long, then it is interrupted
    and rolled back. Default 60.0; 0..86400."""
    allow_seconds_field: bool = False
    """Accept the 6-field cron form with a leading seconds field (for tests that need a
    daemon to fire within seconds; not meant for production). Default false. The
    environment variable BATCH_SCORER_ALLOW_SECONDS_CRON, when set, overrides it at
    load: 1 = true, 0 = false (any other value is an error)."""


class ExecutorConfig(Strict):
    """Where chunks are scored (``executor:``)."""

    kind: Literal["local", "dask"] = "local"
    """``local``: threads in this process. ``dask``: a Dask cluster; the workers read the
    database themselves, so it needs PostgreSQL (a sqlite URL is refused at load).
    Default local."""
    address: str | None = None
    """Address of the Dask scheduler, e.g. ``tcp://host:8786``. Default null: the run starts
    an in-process LocalCluster (one worker process per core). Only used with kind: dask."""
    partitions: int | None = Field(default=None, ge=1)
    """How many parts a job's rows are split into for the executor. Default null (the
    executor decides); else an int >= 1."""

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(c.isspace() for c in value)):
            raise ValueError(f"executor.address {value!r} must be an address like tcp://host:8786")
        return value


class RetentionConfig(Strict):
    """How long the tool keeps what it writes (``retention:``); every key is optional."""

    predictions_keep_as_ofs: int | None = Field(default=None, ge=1)
    """Keep each job's predictions for its last N as_of dates only (N >= 1). Default null (keep all)."""
    predictions_days: int | None = Field(default=None, ge=1)
    """Keep predictions whose as_of is newer than N days (N >= 1). Default null (keep all)."""
    rejected_rows_days: int | None = Field(default=30, ge=1)
    """Keep rejected rows for N days (N >= 1). Default 30; null keeps all."""
    ledger_days: int | None = Field(default=400, ge=1)
    """Keep ledger rows (scoring_runs) for N days (N >= 1). Default 400; null keeps all."""


class RuntimeConfig(Strict):
    """Process knobs (``runtime:``). Each has an environment variable that, when set,
    overrides the file's value once at load; a malformed value is a ConfigError naming
    the variable. Read the resolved values with the ``resolved_*`` methods."""

    model_threads: int | None = Field(default=None, ge=1)
    """Threads for the model's native code (OpenMP/BLAS) during a run. Default null =
    cores - 2, at least 1. Environment override: BATCH_SCORER_MODEL_THREADS (int >= 1)."""
    scoring_threads: int | None = Field(default=None, ge=1)
    """Parts of a chunk scored at once. Default null = 2 on a machine with 2 cores or
    more, else 1. Environment override: BATCH_SCORER_SCORING_THREADS (int >= 1)."""
    progress_seconds: float = Field(default=10.0, ge=0)
    """Off a terminal, a plain progress log line every this many seconds. Default 10.0;
    >= 0. Environment override: BATCH_SCORER_PROGRESS_SECONDS (a number >= 0)."""

    def resolved_model_threads(self) -> int:
        """``model_threads``, or cores - 2 (at least 1) when not set."""
        return self.model_threads or max(1, (os.cpu_count() or 1) - 2)

    def resolved_scoring_threads(self) -> int:
        """``scoring_threads``, or 2 on 2+ cores (else 1) when not set."""
        return self.scoring_threads or (2 if (os.cpu_count() or 1) >= 2 else 1)
