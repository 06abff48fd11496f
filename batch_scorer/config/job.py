"""One job of ``config.yaml``: its model, source, output, labels and monitoring.

A job written with ``matrix:`` is expanded into one :class:`JobConfig` per
combination before validation (see :mod:`batch_scorer.config.matrix`), so each
expansion is validated exactly like a hand-written job.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from batch_scorer.config.sections import MonitorConfig, Strict
from batch_scorer.names import (
    RESERVED_OUTPUT_COLUMNS,
    check_identifier,
    check_plain_name,
    check_table_name,
)

DEFAULT_ALIAS = "champion"
_TYPE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def check_alias(value: str, what: str) -> str:
    """A model alias: a plain name that is not all digits (digits mean a version number)."""
    check_plain_name(value, what)
    if value.isdigit():
        raise ValueError(f"{what} {value!r} is all digits; a number means a version, so write it unquoted")
    return value


class ModelConfig(Strict):
    """The model a job scores with: a file (``path``) or a registry entry (``registry``)."""

    path: Path | None = None
    """File form: the model file (.joblib/.pkl or .skops), relative to the config file's
    folder. Exactly one of ``path`` and ``registry`` is required."""
    sha256: str | None = None
    """File form only: the file's pinned sha256 (64 hex digits); a file with other bytes
    is not loaded. Default null (not pinned)."""
    version: str | int | None = None
    """File form: a label recorded with every prediction; default the first 12 hex digits
    of the sha256 (of ``sha256`` when pinned, else of the file as loaded). Registry form:
    the registry version number to use (an int >= 1); exclusive with ``alias``."""
    registry: str | None = None
    """Registry form: the registered model's name, a plain name (letters, digits, '_',
    '-'; matrix placeholders allowed, e.g. ``churn_{country}``)."""
    alias: str | None = None
    """Registry form: the alias whose version is used. Default ``champion`` when neither
    alias nor version is given; exclusive with ``version``."""
    trusted_types: list[str] = Field(default_factory=list)
    """Dotted type names trusted when loading a .skops file, beyond skops' own safe
    list (e.g. ``sklearn.ensemble._forest.RandomForestClassifier``). Default []."""

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        version = data.get("version")
        if isinstance(version, bool):
            raise ValueError(f"model.version {version!r} must be a label (file) or a number (registry)")
        if data.get("registry") is None:
            if isinstance(version, int):
                data["version"] = str(version)  # a label: version: 3 means "3"
            sha = data.get("sha256")
            if version is None and isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha):
                data["version"] = sha.lower()[:12]
        elif data.get("alias") is None and version is None:
            data["alias"] = DEFAULT_ALIAS
        return data

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("sha256 must be 64 hex digits (run: sha256sum MODEL_FILE)")
        return value.lower() if value else value

    @field_validator("trusted_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _TYPE_NAME.match(name):
                raise ValueError(
                    f"trusted type {name!r} must be a dotted name like "
                    "sklearn.tree._classes.DecisionTreeClassifier"
                )
        return value

    @model_validator(mode="after")
    def _one_form(self) -> ModelConfig:
        if (self.path is None) == (self.registry is None):
            raise ValueError(
                "give exactly one of model.path (a model file) or model.registry (a registered model)"
            )
        if self.path is not None:
            if self.alias is not None:
                raise ValueError("model.alias needs model.registry; a model file has no aliases")
            return self
        check_plain_name(self.registry or "", "model.registry")
        if self.sha256 is not None:
            raise ValueError("model.sha256 only applies to model.path; the registry pins each version's sha256")
        if self.alias is not None and self.version is not None:
            raise ValueError("give model.alias or model.version, not both")
        if self.version is not None and (not isinstance(self.version, int) or self.version < 1):
            raise ValueError(f"model.version {self.version!r} must be a registry version number >= 1")
        if self.alias is not None:
            check_alias(self.alias, "model.alias")
        return self

    @property
    def is_registry(self) -> bool:
        """True for the registry form (``registry:``), False for a model file."""
        return self.registry is not None


class SourceConfig(Strict):
    """Where a job's rows come from: a table (optionally filtered) or a SQL file."""

    table: str | None = None
    """A table or view, ``table`` or ``schema.table``. Exactly one of table/query."""
    query: Path | None = None
    """A .sql file (relative to the config file's folder) whose SELECT gives the rows; it
    may use the bind parameter ``:as_of`` (a DATE: compare a timestamp column's day in
    ``timezone`` yourself, e.g. ``(ts AT TIME ZONE 'Pacific/Auckland')::date = :as_of`` on
    PostgreSQL, where ``ts::date`` takes the session's zone) and, in a matrix job, one per
    matrix key."""
    key: list[str] = Field(min_length=1)
    """The column(s) identifying a row; required, at least one, no repeats."""
    as_of_column: str | None = None
    """Table sources only: a date column; a run reads the rows whose value is the run's
    as_of. Default null (read every row)."""
    where: dict[str, Any] = Field(default_factory=dict)
    """Table sources only: equality filters ``{column: value}`` (plain identifier columns;
    scalar values: text, number, boolean or date), always sent as bind parameters, never
    as SQL text. Matrix placeholders expand in the values. Default {}. A query filters
    with ``:name`` parameters instead."""
    params: dict[str, str] = Field(default_factory=dict)
    """Set by the loader, not written in the file: a matrix job's values (``{key: value}``)
    offered to a ``query:`` source as bind parameters named like the matrix keys. Empty
    for table sources and plain jobs."""

    @field_validator("table")
    @classmethod
    def _table(cls, value: str | None) -> str | None:
        return check_table_name(value, "source.table") if value is not None else None

    @field_validator("key")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        for name in value:
            check_identifier(name, "source.key column")
        if len(set(value)) != len(value):
            raise ValueError("source.key lists a column twice")
        return value

    @field_validator("as_of_column")
    @classmethod
    def _as_of(cls, value: str | None) -> str | None:
        return check_identifier(value, "source.as_of_column") if value is not None else None

    @field_validator("where")
    @classmethod
    def _where(cls, value: dict[str, Any]) -> dict[str, Any]:
        for column, item in value.items():
            check_identifier(str(column), "source.where column")
            if item is None or not isinstance(item, str | int | float | bool | date):
                raise ValueError(
                    f"source.where value for column {column!r} must be a text, number, boolean "
                    f"or date, not {item!r} (an equality filter compares with one value)"
                )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> SourceConfig:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of source.table or source.query")
        if self.query is not None and self.as_of_column is not None:
            raise ValueError(
                "source.as_of_column only applies to source.table; "
                "a query filters with the :as_of bind parameter itself"
            )
        if self.query is not None and self.where:
            raise ValueError(
                "source.where only applies to source.table; filter in the query "
                "with :name bind parameters instead (a matrix key's value is bound as :key)"
            )
        return self


class OutputConfig(Strict):
    """Where a job's predictions go."""

    table: str = "predictions"
    """The output table, ``table`` or ``schema.table``. Default ``predictions``. It may not
    be a source table, a tool table, or a name the tool derives from an output table
    (``X_latest``, ``X_daily``, ``X_shadow``); jobs sharing it must share key columns and
    pass_through columns."""
    pass_through: list[str] = Field(default_factory=list)
    """Source columns copied into the output next to the key. Default []."""
    score: bool | Literal["auto"] = "auto"
    """The score column: true = the model must have predict_proba (else exit 2 before
    anything is written); false = leave it NULL; auto = when the model has one. Default auto."""

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        return check_table_name(value, "output.table")

    @field_validator("pass_through")
    @classmethod
    def _cols(cls, value: list[str]) -> list[str]:
        for name in value:
            check_identifier(name, "output.pass_through column")
        return value


class LabelsConfig(Strict):
    """Where a job's realized outcomes are, for evaluating its predictions (``labels:``)."""

    query: Path | None = None
    """A .sql file (relative to the config file's folder) returning the key column(s), a
    column named ``as_of`` and the label column. Exactly one of query/table. In a matrix
    job it gets the matrix values as bind parameters (see ``params``)."""
    table: str | None = None
    """A table or view (``table`` or ``schema.table``) holding the outcomes."""
    as_of_column: str | None = None
    """Table form (required there): the date column matched against the predictions' as_of."""
    label_column: str
    """The column holding the realized label; required."""
    key: list[str] | None = None
    """The key column(s) matched against the predictions' key. Default: the job's source.key."""
    params: dict[str, str] = Field(default_factory=dict)
    """Set by the loader: a matrix job's values, offered to a labels query as bind
    parameters named like the matrix keys. Empty otherwise."""

    @field_validator("table")
    @classmethod
    def _table(cls, value: str | None) -> str | None:
        return check_table_name(value, "labels.table") if value is not None else None

    @field_validator("as_of_column", "label_column")
    @classmethod
    def _column(cls, value: str | None, info: ValidationInfo) -> str | None:
        return check_identifier(value, f"labels.{info.field_name}") if value is not None else None

    @field_validator("key")
    @classmethod
    def _keys(cls, value: list[str] | None) -> list[str] | None:
        for name in value or []:
            check_identifier(name, "labels.key column")
        return value

    @model_validator(mode="after")
    def _one_form(self) -> LabelsConfig:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of labels.table or labels.query")
        if self.table is not None and self.as_of_column is None:
            raise ValueError("labels.table needs labels.as_of_column (the outcome's date column)")
        if self.query is not None and self.as_of_column is not None:
            raise ValueError("labels.as_of_column only applies to labels.table; a query returns a column named as_of")
        if self.label_column in (self.key or []):
            raise ValueError(f"labels.label_column {self.label_column!r} is also a key column")
        return self


def check_schedule(expr: str, allow_seconds_field: bool) -> str:
    """Validate a cron ``schedule:``; ``ValueError`` says what is wrong.

    With ``allow_seconds_field`` the test-only 6-field form (a leading seconds
    field) is accepted too.
    """
    # Imported here: only configs with schedules need APScheduler at load.
    from batch_scorer.config.cron import cron_trigger

    cron_trigger(expr, "UTC", allow_seconds=allow_seconds_field)
    return expr


class JobConfig(Strict):
    """One runnable job (a hand-written one, or one expansion of a matrix job)."""

    name: str
    """The job's name: its key under ``jobs:``, or for a matrix expansion the matrix
    job's name followed by the values in the matrix's key order (``churn.DE.a``)."""
    base: str
    """Set by the loader: the matrix job's name for an expansion; a plain job's own name."""
    matrix_values: dict[str, str] = Field(default_factory=dict)
    """Set by the loader: an expansion's ``{matrix key: value}``; empty for plain jobs."""
    model: ModelConfig
    """The model: ``{path, sha256, version}`` or ``{registry, alias | version}``."""
    source: SourceConfig
    """Where the rows come from."""
    output: OutputConfig = Field(default_factory=OutputConfig)
    """Where the predictions go (default: table ``predictions``)."""
    features: list[str] | None = None
    """The model's input columns, in order; default null = the names the model was fitted
    with (required for a model fitted without feature names)."""
    schedule: str | None = None
    """A 5-field cron expression (minute hour day-of-month month day-of-week, crontab
    rules, in ``timezone``) for the ``schedule`` daemon. Default null (not scheduled)."""
    as_of: Literal["fire_date", "previous_day"] = "fire_date"
    """The as_of a run uses when it is not given a date (scheduled runs, catch-up, and any
    run that does not name one): ``fire_date`` = today in ``timezone`` (the fire's date for
    a scheduled run), ``previous_day`` = the day before. Default fire_date."""
    chunk_size: int | None = Field(default=None, ge=1)
    """Rows per chunk for this job; default null = defaults.chunk_size."""
    max_rejected_fraction: float | None = Field(default=None, ge=0, le=1)
    """This job's rejected-row limit (0..1); default null = defaults.max_rejected_fraction."""
    allow_empty: bool = False
    """Succeed (publishing nothing) when the source has no rows for the as_of. Default false."""
    allow_version_mismatch: bool = False
    """Load a model pickled with another scikit-learn version (a warning is logged). Default false."""
    challengers: list[str | int] = Field(default_factory=list)
    """Registry models only: other aliases or version numbers of the same registered model
    scored alongside the champion (shadow scoring). No repeats, and not the job's own
    alias or version. Default []."""
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    """Drift monitoring; every key not given here takes defaults.monitor's value."""
    labels: LabelsConfig | None = None
    """Where realized outcomes are, for evaluating predictions. Default null (none)."""
    after: list[str] = Field(default_factory=list)
    """Jobs this job runs after when they run in the same command: job names or matrix
    names (a matrix name means every expansion of it); matrix placeholders expand
    (``segments.{country}``). Default []."""
    depends_on: tuple[str, ...] = ()
    """Set by the loader: ``after`` resolved to expanded job names, in config order."""

    @model_validator(mode="before")
    @classmethod
    def _fill(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        data.setdefault("base", data.get("name"))
        labels, source = data.get("labels"), data.get("source")
        if isinstance(labels, dict) and "key" not in labels and isinstance(source, dict):
            data["labels"] = {**labels, "key": source.get("key")}
        for item in data.get("challengers") or []:
            if isinstance(item, bool):
                raise ValueError(f"challengers entry {item!r} must be an alias or a version number")
        return data

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Checked here so a typo fails at config load, not at 02:00 in the daemon.
        if value is not None:
            check_schedule(value, bool((info.context or {}).get("allow_seconds_field")))
        return value

    @model_validator(mode="after")
    def _reserved(self) -> JobConfig:
        for col in [*self.source.key, *self.output.pass_through]:
            if col in RESERVED_OUTPUT_COLUMNS:
                raise ValueError(
                    f"column {col!r} clashes with the output table's own column of that name; "
                    "rename it in the source (e.g. in a query: SELECT x AS other_name)"
                )
        overlap = set(self.source.key) & set(self.output.pass_through)
        if overlap:
            raise ValueError(f"output.pass_through repeats key column(s) {sorted(overlap)}")
        return self

    @model_validator(mode="after")
    def _challengers(self) -> JobConfig:
        if not self.challengers:
            return self
        if not self.model.is_registry:
            raise ValueError("challengers need a registry model (model.registry); a model file has no other versions")
        own = self.model.alias if self.model.alias is not None else self.model.version
        seen: set[str | int] = set()
        for item in self.challengers:
            if isinstance(item, int):
                if item < 1:
                    raise ValueError(f"challengers entry {item} must be a version number >= 1")
            else:
                check_alias(item, "challengers entry")
            if item in seen:
                raise ValueError(f"challengers lists {item!r} twice")
            if item == own:
                raise ValueError(f"challengers entry {item!r} is the job's own model (the champion)")
            seen.add(item)
        return self
