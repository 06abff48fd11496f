"""Load ``config.yaml`` into one validated, frozen :class:`Config`.

Rules: ``${VAR}`` and ``${VAR:-default}`` expand from the environment (an
unset variable in ``database.url`` is reported only when a command connects,
see :meth:`DatabaseConfig.require_url`); a key written twice is an error with
both line numbers; unknown keys are errors with a "did you mean" hint; jobs
with ``matrix:`` expand into one job per combination; relative paths (model
files, SQL files, SQLite database files) resolve against the folder of the
config file, not the working directory; the runtime knobs' environment
variables are applied once, here.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from batch_scorer.config.clashes import check_table_clashes
from batch_scorer.config.environment import apply_env_overrides, expand_env, first_unset_variable
from batch_scorer.config.job import JobConfig, LabelsConfig, ModelConfig, OutputConfig, SourceConfig
from batch_scorer.config.matrix import MATRIX_KEY, Expansion, expand_jobs
from batch_scorer.config.sections import (
    DatabaseConfig,
    Defaults,
    ExecutorConfig,
    MonitorConfig,
    RetentionConfig,
    RuntimeConfig,
    SchedulerConfig,
    Strict,
    url_backend,
)
from batch_scorer.config.selection import dependency_order, matrix_jobs, resolve_after, select, unknown_name
from batch_scorer.config.yamlfile import read_yaml
from batch_scorer.errors import ConfigError, UsageError
from batch_scorer.files import warn_if_writable_by_others
from batch_scorer.masking import mask_text
from batch_scorer.names import JOB_NAME

log = logging.getLogger(__name__)

__all__ = [
    "CONFIG_ENV_VAR", "Config", "DatabaseConfig", "Defaults", "ExecutorConfig", "JobConfig",
    "LabelsConfig", "ModelConfig", "MonitorConfig", "OutputConfig", "RetentionConfig",
    "RuntimeConfig", "SchedulerConfig", "SourceConfig", "config_from_dict", "default_config_path",
    "load_config", "resolve_sqlite_url",
]

CONFIG_ENV_VAR = "BATCH_SCORER_CONFIG"
DEFAULT_CONFIG_NAME = "config.yaml"

# Keys the loader fills in; written in the file they would be silently replaced.
_LOADER_JOB_KEYS = ("name", "base", "matrix_values", "depends_on")
_LOADER_SECTION_KEYS = {"source": ("params",), "labels": ("params",)}
_NOT_USER_KEYS = {*_LOADER_JOB_KEYS, "params", "base_dir", "source_file"}


class Config(Strict):
    """The whole validated configuration. ``base_dir`` is the config file's folder."""

    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    """The database (``url`` and connection settings)."""
    timezone: str = "UTC"
    """IANA timezone (e.g. Europe/Berlin) for schedules and for "today". Default UTC."""
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    """Settings of the ``schedule`` daemon."""
    defaults: Defaults = Field(default_factory=Defaults)
    """Values jobs take when they do not set their own."""
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    """Where chunks are scored: ``local`` threads (default) or a ``dask`` cluster."""
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    """How long predictions, rejected rows and ledger rows are kept."""
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    """Process knobs (threads, progress log interval), overridable by environment variables."""
    jobs: dict[str, JobConfig] = Field(default_factory=dict)
    """Every runnable job by name, in config order; a matrix job appears as its expansions."""
    base_dir: Path = Field(default_factory=Path.cwd)
    """Set by the loader: the config file's folder (relative paths resolve against it)."""
    source_file: Path | None = None
    """Set by the loader: the config file read, or None for a mapping."""

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
    def _across_jobs(self) -> Config:
        check_table_clashes(self.jobs.values())
        url = self.database.url
        if self.executor.kind == "dask" and first_unset_variable(url) is None and url_backend(url) == "sqlite":
            raise ValueError(
                "executor.kind dask needs a PostgreSQL database.url (postgresql://user@host/db): "
                "Dask workers read the database themselves, and a SQLite file is local to "
                "this machine. Use kind: local with SQLite"
            )
        return self

    def job(self, name: str) -> JobConfig:
        """Return the job called ``name`` (an expanded name) or raise a ConfigError listing the known ones."""
        try:
            return self.jobs[name]
        except KeyError:
            expansions = self.matrix_jobs().get(name)
            if expansions:
                raise ConfigError(
                    f"{name!r} is a matrix job; name one of its jobs ({', '.join(expansions)}), "
                    f"or select them all with select([{name!r}])"
                ) from None
            raise unknown_name(self.jobs, name, self.source_file) from None

    def select(self, names: Sequence[str], all_jobs: bool = False) -> list[str]:
        """The expanded job names that ``names`` select (or every job with ``all_jobs``).

        A job name selects that job; a matrix job's name every expansion of it
        (in config order); ``churn.DE`` of a ``{country, tier}`` matrix the
        expansions starting with DE. Order follows ``names``, without repeats.
        An unknown name is a ConfigError (known names, did-you-mean); a bare
        string, names together with ``all_jobs``, or neither is a UsageError.
        ``all_jobs`` with no jobs defined gives [].
        """
        return select(self.jobs, names, all_jobs, self.source_file)

    def order(self, names: Sequence[str]) -> list[list[str]]:
        """Expanded job ``names`` in dependency waves: a job comes after the selected jobs it
        depends on (transitively, via ``after:``); jobs not named are not added. Jobs in one
        wave do not depend on each other. Unknown names are ConfigErrors."""
        for name in names:
            self.job(name)
        return dependency_order({n: j.depends_on for n, j in self.jobs.items()}, names)

    def matrix_jobs(self) -> dict[str, list[str]]:
        """``{matrix job name: [its expanded job names in config order]}``."""
        return matrix_jobs(self.jobs)

    def chunk_size(self, job: JobConfig) -> int:
        """The job's chunk_size, else defaults.chunk_size."""
        return job.chunk_size or self.defaults.chunk_size

    def max_rejected_fraction(self, job: JobConfig) -> float:
        """The job's max_rejected_fraction, else defaults.max_rejected_fraction."""
        if job.max_rejected_fraction is not None:
            return job.max_rejected_fraction
        return self.defaults.max_rejected_fraction



def default_config_path() -> Path:
    """``$BATCH_SCORER_CONFIG`` if set, else ``./config.yaml``."""
    return Path(os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_NAME)


def load_config(path: str | os.PathLike[str] | Mapping[str, Any] | None = None) -> Config:
    """Read, expand and validate a config. Raises :class:`ConfigError`.

    ``path`` is a file (str or path-like; None = :func:`default_config_path`), or an
    already-parsed mapping, validated like :func:`config_from_dict` with the working
    directory as ``base_dir``. Any other type is a :class:`UsageError`.
    """
    if isinstance(path, Mapping):
        return config_from_dict(path)
    if path is not None and not isinstance(path, str | os.PathLike):
        raise UsageError(
            f"a config is a file path (str or Path) or a mapping of its keys, not {type(path).__name__}"
        )
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
    raw = read_yaml(text, cfg_path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(cfg_path)!r} must be a mapping of keys at the top level")
    _warn_literal_password(raw, cfg_path)
    _warn_if_writable_by_others(cfg_path)
    return config_from_dict(raw, base_dir=cfg_path.resolve().parent, source_file=cfg_path)


def config_from_dict(
    raw: Mapping[str, Any], base_dir: Path | None = None, source_file: Path | None = None
) -> Config:
    """Validate an already-parsed mapping (handy from a notebook or a test)."""
    base = (base_dir or Path.cwd()).resolve()
    data = apply_env_overrides(expand_env(dict(raw)))
    jobs, origins = expand_jobs(_raw_jobs(data))
    data["jobs"] = jobs
    data["base_dir"] = base
    data["source_file"] = source_file
    scheduler = data.get("scheduler")
    allow = isinstance(scheduler, dict) and scheduler.get("allow_seconds_field") is True
    try:
        cfg = Config.model_validate(data, context={"allow_seconds_field": allow})
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source_file, origins)) from None
    describe = {name: origin.describe() for name, origin in origins.items()}
    deps = resolve_after(cfg.jobs, describe, source_file)
    resolved = {n: j.model_copy(update={"depends_on": deps[n]}) for n, j in cfg.jobs.items()}
    return _resolve_paths(cfg.model_copy(update={"jobs": resolved}), base)


def _raw_jobs(data: Mapping[str, Any]) -> dict[str, Any]:
    """The ``jobs:`` mapping, names checked, loader keys refused, defaults.monitor merged in."""
    jobs = data.get("jobs") or {}
    if not isinstance(jobs, dict):
        raise ConfigError("'jobs' must be a mapping of job name to job settings")
    defaults = data.get("defaults")
    inherited = defaults.get("monitor") if isinstance(defaults, dict) else None
    out: dict[str, Any] = {}
    for name, job in jobs.items():
        _check_job_name(name)
        if isinstance(job, dict):
            _refuse_loader_keys(name, job)
            job = dict(job)
            if isinstance(inherited, dict) and isinstance(job.get("monitor", {}), dict):
                job["monitor"] = {**inherited, **job.get("monitor", {})}
            if MATRIX_KEY not in job:
                job["name"] = name
        out[name] = job
    return out


def _check_job_name(name: Any) -> None:
    if not isinstance(name, str):
        kind = "number" if isinstance(name, int | float) and not isinstance(name, bool) else type(name).__name__
        raise ConfigError(
            f"job name {name!r} is read by YAML as a {kind}, not as text; quote it "
            f"(\"{name}\":) or use a name with letters"
        )
    if not JOB_NAME.match(name):
        raise ConfigError(
            f"job name {name!r} must use letters, digits, '_', '.' or '-' (at most 100)"
        )


def _refuse_loader_keys(name: str, job: Mapping[str, Any]) -> None:
    for key in _LOADER_JOB_KEYS:
        if key in job:
            raise ConfigError(
                f"unknown key jobs.{name}.{key}: batch-scorer sets it itself "
                "(a job's name is its key under jobs:); remove it"
            )
    for section, keys in _LOADER_SECTION_KEYS.items():
        part = job.get(section)
        for key in keys:
            if isinstance(part, dict) and key in part:
                raise ConfigError(
                    f"unknown key jobs.{name}.{section}.{key}: a query's bind parameters come "
                    "from the job's matrix values (and :as_of); write fixed values into the query"
                )


def _field_names(model: type[BaseModel]) -> list[str]:
    names = [n for n in model.model_fields if n not in _NOT_USER_KEYS]
    return [*names, MATRIX_KEY] if model is JobConfig else names


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The model class of a field (also inside ``X | None``), or None for a plain value."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


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
        sub = _submodel(field.annotation) if field is not None else None
        if sub is None:
            return None
        model = sub
    return model


def _explain(exc: ValidationError, source_file: Path | None, origins: Mapping[str, Expansion]) -> str:
    where = f" in {source_file}" if source_file else ""
    lines: list[str] = []
    said: set[str] = set()
    for err in exc.errors():
        loc = tuple(err["loc"])
        shown, context = loc, ""
        origin = origins.get(str(loc[1])) if len(loc) > 1 and loc[0] == "jobs" else None
        if origin is not None:
            # Name the key as the user wrote it (under the matrix job), plus which expansion.
            shown = ("jobs", origin.base, *loc[2:])
            context = f" (in job {loc[1]!r}, from {origin.describe()})"
        key = ".".join(str(p) for p in shown)
        if err["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            hint = _did_you_mean(str(loc[-1]), _field_names(parent)) if parent else ""
            line = f"unknown key {key}{hint}"
        elif err["type"] == "missing":
            line = f"missing key {key}"
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            line = f"{key}: {msg}" if key else msg
        if line in said:
            continue  # the same mistake in every expansion of a matrix job: say it once
        said.add(line)
        lines.append(line + context)
    return f"invalid configuration{where}: " + "; ".join(lines) + "."


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _resolve_paths(cfg: Config, base: Path) -> Config:
    jobs = {}
    for name, job in cfg.jobs.items():
        update: dict[str, Any] = {}
        if job.model.path is not None:
            path = _resolve(job.model.path, base, f"jobs.{name}.model.path")
            update["model"] = job.model.model_copy(update={"path": path})
        if job.source.query is not None:
            query = _resolve(job.source.query, base, f"jobs.{name}.source.query")
            update["source"] = job.source.model_copy(update={"query": query})
        if job.labels is not None and job.labels.query is not None:
            query = _resolve(job.labels.query, base, f"jobs.{name}.labels.query")
            update["labels"] = job.labels.model_copy(update={"query": query})
        jobs[name] = job.model_copy(update=update)
    url = cfg.database.url
    if first_unset_variable(url) is None:
        url = resolve_sqlite_url(url, base)
    db = cfg.database.model_copy(update={"url": url})
    return cfg.model_copy(update={"jobs": jobs, "database": db})


def _expanduser(path: Path, key: str) -> Path:
    try:
        return path.expanduser()
    except RuntimeError as exc:  # ~name of an unknown user, or no home directory
        raise ConfigError(
            f"{key} {str(path)!r} starts with '~', but that home directory is not known "
            f"({exc}); write the path in full or relative to the config file's folder"
        ) from None


def _resolve(path: Path, base: Path, key: str) -> Path:
    path = _expanduser(path, key)
    return path if path.is_absolute() else (base / path)


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
    db_path = _expanduser(Path(parsed.database), "database.url path")
    if not db_path.is_absolute():
        db_path = base / db_path
    return parsed.set(database=str(db_path)).render_as_string(hide_password=False)


def _warn_if_writable_by_others(path: Path) -> None:
    warn_if_writable_by_others(
        path,
        "config file",
        "anyone who can write it can point a job at any model file and run code as this user",
    )


_WARNED_PASSWORD: set[str] = set()  # config files already warned about, once per process


def _warn_literal_password(raw: Mapping[str, Any], path: Path) -> None:
    db = raw.get("database")
    url = db.get("url") if isinstance(db, dict) else None
    if not isinstance(url, str) or "${" in url.split("@")[0]:
        return
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return
    if parsed.password and str(path.resolve()) not in _WARNED_PASSWORD:
        _WARNED_PASSWORD.add(str(path.resolve()))
        # The example avoids user:...@ so the log masking filter leaves it readable.
        log.warning(
            "%s holds a literal database password; put it in an environment "
            "variable instead: url: ${DATABASE_URL}, or leave the password out of the URL "
            "and export PGPASSWORD (PostgreSQL drivers read it)", path
        )
