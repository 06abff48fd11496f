"""Load ``config.yaml`` into one validated, frozen :class:`Config`.

Rules (DESIGN.md, "Configuration"): ``${VAR}`` and ``${VAR:-default}`` expand
from the environment; unknown keys are errors with a "did you mean" hint;
relative paths (model files, SQL files, SQLite database files) resolve against
the folder of the config file, not the working directory.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from batch_scorer.errors import ConfigError
from batch_scorer.files import warn_if_writable_by_others
from batch_scorer.masking import mask_text
from batch_scorer.names import JOB_NAME, RESERVED_OUTPUT_COLUMNS, check_identifier, check_table_name

log = logging.getLogger(__name__)

CONFIG_ENV_VAR = "BATCH_SCORER_CONFIG"
DEFAULT_CONFIG_NAME = "config.yaml"

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(_Strict):
    url: str = "sqlite:///data/batch_scorer.db"
    busy_timeout_seconds: float = Field(default=30.0, gt=0)
    # Transient errors (connection lost, serialization failure, deadlock) re-run
    # the whole run up to `retries` more times; see batch_scorer/retry.py.
    retries: int = Field(default=2, ge=0, le=10)
    retry_backoff_seconds: float = Field(default=2.0, ge=0, le=300)


class Defaults(_Strict):
    chunk_size: int = Field(default=50_000, ge=1)
    max_rejected_fraction: float = Field(default=0.01, ge=0, le=1)


class ModelConfig(_Strict):
    path: Path
    sha256: str | None = None
    version: str | None = None

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("sha256 must be 64 hex digits (run: sha256sum MODEL_FILE)")
        return value.lower() if value else value


class SourceConfig(_Strict):
    table: str | None = None
    query: Path | None = None
    key: list[str] = Field(min_length=1)
    as_of_column: str | None = None

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

    @model_validator(mode="after")
    def _one_source(self) -> SourceConfig:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of source.table or source.query")
        if self.query is not None and self.as_of_column is not None:
            raise ValueError(
                "source.as_of_column only applies to source.table; "
                "a query filters with the :as_of bind parameter itself"
            )
        return self


class OutputConfig(_Strict):
    table: str = "predictions"
    pass_through: list[str] = Field(default_factory=list)
    # score column: true = the model must have predict_proba (else exit 2 before
    # anything is written); false = leave it NULL; auto = when the model has one.
    score: bool | Literal["auto"] = "auto"

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


class JobConfig(_Strict):
    name: str
    model: ModelConfig
    source: SourceConfig
    output: OutputConfig = Field(default_factory=OutputConfig)
    features: list[str] | None = None
    schedule: str | None = None
    as_of: Literal["fire_date", "previous_day"] = "fire_date"
    chunk_size: int | None = Field(default=None, ge=1)
    max_rejected_fraction: float | None = Field(default=None, ge=0, le=1)
    allow_empty: bool = False
    allow_version_mismatch: bool = False

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        # Checked here so a typo fails at config load, not at 02:00 in the daemon.
        if value is not None:
            from batch_scorer.config.cron import cron_trigger

            cron_trigger(value, "UTC")
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


class SchedulerConfig(_Strict):
    """Settings of the ``batch-scorer schedule`` daemon (README "Scheduling and backfill")."""

    # On start, the latest fire of each job within this many hours is run once
    # if the ledger shows no succeeded run for it (catch-up after downtime).
    catch_up_hours: float = Field(default=24.0, ge=0, le=24 * 366)
    # On SIGTERM/SIGINT a run in progress may finish for this long, then it is
    # interrupted and rolled back.
    stop_timeout_seconds: float = Field(default=60.0, ge=0, le=24 * 3600)


class Config(_Strict):
    """The whole validated configuration. ``base_dir`` is the config file's folder."""

    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    timezone: str = "UTC"
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    defaults: Defaults = Field(default_factory=Defaults)
    jobs: dict[str, JobConfig] = Field(default_factory=dict)
    base_dir: Path = Field(default_factory=Path.cwd)
    source_file: Path | None = None

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r} (use an IANA name like Europe/Berlin)") from exc
        return value

    @model_validator(mode="after")
    def _shared_outputs(self) -> Config:
        keys_by_table: dict[str, tuple[str, list[str]]] = {}
        for job in self.jobs.values():
            seen = keys_by_table.setdefault(job.output.table, (job.name, job.source.key))
            if seen[1] != job.source.key:
                raise ValueError(
                    f"jobs {seen[0]!r} and {job.name!r} write to output table "
                    f"{job.output.table!r} with different keys {seen[1]} and {job.source.key}; "
                    "jobs sharing an output table must share key column names "
                    "(give one of them its own output.table)"
                )
        return self

    def job(self, name: str) -> JobConfig:
        """Return the job called ``name`` or raise a ConfigError listing the known ones."""
        try:
            return self.jobs[name]
        except KeyError:
            hint = _did_you_mean(name, list(self.jobs))
            known = ", ".join(sorted(self.jobs)) or "(none)"
            raise ConfigError(
                f"unknown job {name!r}{hint}. Jobs in {self.source_file or 'the config'}: {known}."
            ) from None

    def chunk_size(self, job: JobConfig) -> int:
        return job.chunk_size or self.defaults.chunk_size

    def max_rejected_fraction(self, job: JobConfig) -> float:
        if job.max_rejected_fraction is not None:
            return job.max_rejected_fraction
        return self.defaults.max_rejected_fraction

    def jobs_for_output(self, table: str) -> list[JobConfig]:
        return [j for j in self.jobs.values() if j.output.table == table]


def default_config_path() -> Path:
    """``$BATCH_SCORER_CONFIG`` if set, else ``./config.yaml``."""
    return Path(os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_NAME)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read, expand and validate a config file. Raises :class:`ConfigError`."""
    cfg_path = Path(path) if path is not None else default_config_path()
    try:
        text = cfg_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {str(cfg_path)!r} not found. Pass --config PATH, set "
            f"{CONFIG_ENV_VAR}, or run from the folder that holds config.yaml."
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(cfg_path)!r}: {exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(cfg_path)!r} is not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(cfg_path)!r} must be a mapping of keys at the top level")
    _warn_literal_password(raw)
    _warn_if_writable_by_others(cfg_path)
    return config_from_dict(raw, base_dir=cfg_path.resolve().parent, source_file=cfg_path)


def config_from_dict(
    raw: Mapping[str, Any], base_dir: Path | None = None, source_file: Path | None = None
) -> Config:
    """Validate an already-parsed mapping (handy from a notebook or a test)."""
    base = (base_dir or Path.cwd()).resolve()
    data = _expand(dict(raw), ())
    jobs = data.get("jobs") or {}
    if not isinstance(jobs, dict):
        raise ConfigError("'jobs' must be a mapping of job name to job settings")
    for name, job in jobs.items():
        if not JOB_NAME.match(str(name)):
            raise ConfigError(
                f"job name {name!r} must use letters, digits, '_', '.' or '-' (at most 100)"
            )
        if isinstance(job, dict):
            job.setdefault("name", str(name))
    data["jobs"] = jobs
    data["base_dir"] = base
    data["source_file"] = source_file
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source_file)) from None
    return _resolve_paths(cfg, base)


def _expand(value: Any, where: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, (*where, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*where, str(i))) for i, v in enumerate(value)]
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ and (os.environ[name] != "" or default is None):
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(
                f"config key {'.'.join(where)} uses ${{{name}}} but the environment variable "
                f"{name} is not set. Export it, or write ${{{name}:-default}}."
            )

        return _ENV_PATTERN.sub(sub, value)
    return value


def _field_names(model: type[BaseModel]) -> list[str]:
    return [n for n in model.model_fields if n not in {"name", "base_dir", "source_file"}]


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    path = list(loc)
    while path:
        part = path.pop(0)
        if model is Config and part == "jobs":
            if not path:
                return None
            path.pop(0)
            model = JobConfig
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def _explain(exc: ValidationError, source_file: Path | None) -> str:
    where = f" in {source_file}" if source_file else ""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            hint = _did_you_mean(str(loc[-1]), _field_names(parent)) if parent else ""
            lines.append(f"unknown key {key}{hint}")
        elif err["type"] == "missing":
            lines.append(f"missing key {key}")
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"{key}: {msg}" if key else msg)
    return f"invalid configuration{where}: " + "; ".join(lines) + "."


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _resolve_paths(cfg: Config, base: Path) -> Config:
    def resolve(p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else (base / p)

    jobs = {}
    for name, job in cfg.jobs.items():
        model = job.model.model_copy(update={"path": resolve(job.model.path)})
        source = job.source
        if source.query is not None:
            source = source.model_copy(update={"query": resolve(source.query)})
        jobs[name] = job.model_copy(update={"model": model, "source": source})
    db = cfg.database.model_copy(update={"url": resolve_sqlite_url(cfg.database.url, base)})
    return cfg.model_copy(update={"jobs": jobs, "database": db})


def resolve_sqlite_url(url: str, base: Path) -> str:
    """Make a relative ``sqlite:///file`` path absolute against ``base``."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: e.g. a port that is not a number
        raise ConfigError(
            f"database.url is not a valid SQLAlchemy URL ({mask_text(str(exc))}); "
            "examples: sqlite:///data/demo.db, postgresql://user@host:5432/db "
            "(%-encode special characters in a password)"
        ) from None
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return url
    if parsed.database == ":memory:" or parsed.database.startswith("file:"):
        return url
    db_path = Path(parsed.database).expanduser()
    if not db_path.is_absolute():
        db_path = base / db_path
    return parsed.set(database=str(db_path)).render_as_string(hide_password=False)


def _warn_if_writable_by_others(path: Path) -> None:
    warn_if_writable_by_others(
        path,
        "config file",
        "anyone who can write it can point a job at any model file and run code as this user",
    )


def _warn_literal_password(raw: Mapping[str, Any]) -> None:
    db = raw.get("database")
    url = db.get("url") if isinstance(db, dict) else None
    if not isinstance(url, str) or "${" in url.split("@")[0]:
        return
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return
    if parsed.password:
        # The example avoids user:...@ so the log masking filter leaves it readable.
        log.warning(
            "config.yaml holds a literal database password; put it in an environment "
            "variable instead: url: ${DATABASE_URL}, or leave the password out of the URL "
            "and export PGPASSWORD (PostgreSQL drivers read it)"
        )
