"""The Python API: every CLI command is one function here, and works the same from a notebook::

    from batch_scorer import api
    results = api.run("config.yaml", ["churn"], as_of="2026-03-31")
    results.raise_for_failures()          # or api.run(..., check=True)

Each function takes a config (a path, a loaded :class:`Config`, a dict, or None for
``$BATCH_SCORER_CONFIG`` / ./config.yaml), owns the engine it opens (one pooled
engine per call, disposed when it returns), and raises
:class:`batch_scorer.errors.BatchScorerError` subclasses for bad input.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch_scorer.config import Config, load_config
from batch_scorer.dates import check_not_future, to_date
from batch_scorer.errors import EXIT_OK, BatchScorerError, ConfigError, UsageError
from batch_scorer.executors.threads import limit_model_threads, shutdown_pools
from batch_scorer.masking import first_line, mask_text
from batch_scorer.runtime import backfill as backfilling
from batch_scorer.runtime.jobs import Invocation, job_as_of, run_jobs, threads_of
from batch_scorer.runtime.outcome import RunResult, RunResults
from batch_scorer.runtime.plan import ModelCache, build_plan
from batch_scorer.runtime.progress import DateFn, ProgressFn
from batch_scorer.scheduling import daemon as scheduler
from batch_scorer.storage import ledger
from batch_scorer.storage import retract as retracting
from batch_scorer.storage.db import engine_for
from batch_scorer.storage.ddl import create_tool_tables
from batch_scorer.storage.schema import Trigger
from batch_scorer.storage.sinks.output import missing, prepare_output_table

log = logging.getLogger(__name__)

ConfigLike = Config | str | os.PathLike[str] | Mapping[str, Any] | None


def as_config(config: ConfigLike) -> Config:
    """Accept a loaded Config, a path, a dict, or None (``$BATCH_SCORER_CONFIG`` / ./config.yaml)."""
    if isinstance(config, Config):
        return config
    return load_config(config)  # type: ignore[arg-type]


def select_jobs(cfg: Config, names: Sequence[str] | str, all_jobs: bool) -> list[str]:
    """The expanded job names to act on (a matrix job's name selects every expansion)."""
    selected = cfg.select(names, all_jobs)  # type: ignore[arg-type]
    if all_jobs and not selected:
        raise UsageError(f"no jobs are defined in {cfg.source_file or 'the config'}")
    return selected


def _trigger(value: str) -> str:
    try:
        return Trigger(value).value
    except ValueError:
        raise UsageError(f"trigger {value!r} is not one of {', '.join(t.value for t in Trigger)}") from None


def _parallel(cfg: Config, parallel: int | None) -> int:
    value = parallel if parallel is not None else cfg.defaults.parallel_jobs
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UsageError(f"parallel must be a whole number of at least 1, not {value!r}")
    return value


@contextlib.contextmanager
def _engine(cfg: Config, *, create: bool = True, pool_size: int | None = None) -> Iterator[Engine]:
    with engine_for(cfg.database.require_url(), cfg.database.busy_timeout_seconds, pool_size=pool_size,
                    create=create) as engine:
        yield engine


def run(
    config: ConfigLike = None,
    jobs: Sequence[str] = (),
    *,
    all_jobs: bool = False,
    as_of: date | datetime | str | None = None,
    trigger: str = "manual",
    parallel: int | None = None,
    allow_future: bool = False,
    check: bool = False,
    on_progress: ProgressFn | None = None,
) -> RunResults:
    """Score ``jobs`` (or all) for ``as_of`` and publish each job's predictions, all or nothing.

    ``as_of``: a date, datetime, pandas Timestamp or ISO string (default: each job's
    ``as_of:`` rule applied to today in ``timezone``). Jobs run up to ``parallel``
    at a time (default ``defaults.parallel_jobs``), ordered by ``after:``; jobs reading
    the same source rows read them once. A job's failure is a result, not an
    exception; ``check=True`` raises :class:`RunFailed` if any job did not succeed
    (the same as ``results.raise_for_failures()``).
    """
    cfg = as_config(config)
    cfg.database.require_url()
    names = select_jobs(cfg, jobs, all_jobs)
    day = _as_of(cfg, as_of, allow_future)
    workers = _parallel(cfg, parallel)
    with _engine(cfg, pool_size=4 * min(workers, len(names)) + 2) as engine, _threads(cfg):
        inv = Invocation(cfg, engine, _trigger(trigger), workers, on_progress=on_progress)
        results = run_jobs(inv, names, day)
    return results.raise_for_failures() if check else results


@contextlib.contextmanager
def _threads(cfg: Config) -> Iterator[None]:
    """The model thread cap for one command; the scoring threads end with it."""
    try:
        with limit_model_threads(threads_of(cfg)):
            yield
    finally:
        shutdown_pools()


def _as_of(cfg: Config, value: Any, allow_future: bool) -> date | None:
    if value is None:
        return None
    day = to_date(value, cfg.timezone)
    check_not_future(day, cfg.timezone, cfg.defaults.future_days, allow_future)
    return day


@dataclass(frozen=True)
class Check:
    """The outcome of validating (or initialising) one job."""

    job: str
    ok: bool
    message: str
    exit_code: int = EXIT_OK


@dataclass(frozen=True)
class InitReport:
    """What ``init-db`` did: one line per table or job, and whether everything is ready."""

    lines: list[str]
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def exit_code(self) -> int:
        return max((c.exit_code for c in self.checks), default=EXIT_OK)


def init_db(config: ConfigLike = None) -> InitReport:
    """Create the tool's tables and views, and each job's output table and views. Idempotent.

    A job whose output could not be created (its model or source is missing, or
    the role may not create it) makes the report not ok (exit code non-zero)."""
    cfg = as_config(config)
    lines, checks = [], []
    with _engine(cfg) as engine:
        create_tool_tables(engine)
        lines.append("tool tables and views: ready")
        models = ModelCache()
        for name in cfg.jobs:
            try:
                plan = build_plan(cfg, engine, name, job_as_of(cfg, name), "manual", models)
                prepare_output_table(engine, plan.output, plan.prediction_kind, name, plan.classifier, create=True)
            except (BatchScorerError, sa.exc.SQLAlchemyError) as exc:
                checks.append(_failed_check(name, exc))
                lines.append(f"job {name}: output table NOT ready: {checks[-1].message}")
                continue
            checks.append(Check(name, True, f"output table {plan.output_name} and its views: ready"))
            lines.append(f"job {name}: {checks[-1].message}")
    return InitReport(lines, checks)


def _failed_check(name: str, exc: BaseException) -> Check:
    if isinstance(exc, BatchScorerError):
        return Check(name, False, mask_text(str(exc)), exc.exit_code)
    return Check(name, False, f"database error: {mask_text(first_line(exc))}", 1)


def validate(config: ConfigLike = None, jobs: Sequence[str] = ()) -> list[Check]:
    """Check config, connection, model (pin, load, contract) and source columns, and that each
    output table exists or can be created. Writes nothing (not even a SQLite file)."""
    cfg = as_config(config)
    names = select_jobs(cfg, jobs, all_jobs=not jobs) if cfg.jobs or jobs else []
    checks = []
    with _engine(cfg, create=False) as engine:
        models = ModelCache()
        creatable = _can_create(engine)
        for name in names:
            try:
                plan = build_plan(cfg, engine, name, job_as_of(cfg, name), "manual", models)
            except BatchScorerError as exc:
                checks.append(_failed_check(name, exc))
                continue
            m = plan.champion.model
            absent = missing(engine, plan.output, plan.classifier)
            if absent and not creatable:
                checks.append(Check(name, False, (
                    f"{', '.join(absent)} do(es) not exist and {engine.url.username or 'this user'} may not "
                    "create it: run `batch-scorer init-db` as the schema owner"), 2))
                continue
            output = f"output {plan.output_name}" + (" (will be created)" if absent else "")
            checks.append(Check(name, True, f"model {m.version} ({len(m.features)} features, "
                                            f"{_kind(m)}), source columns present, {output}"))
    return checks


def _kind(model: Any) -> str:
    describe = getattr(model, "describe_kind", None)
    if callable(describe):
        return str(describe())
    return "classifier" if model.is_classifier else "regressor"


def _can_create(engine: Engine) -> bool:
    if engine.dialect.name != "postgresql":
        return True
    with engine.connect() as conn:
        return bool(conn.execute(sa.text("SELECT has_schema_privilege(current_schema(), 'CREATE')")).scalar())


def runs(
    config: ConfigLike = None, job: str | None = None, limit: int = 20, *,
    status: Sequence[str] = (), since: date | datetime | str | None = None,
) -> list[ledger.RunRecord]:
    """The latest runs from the ledger, newest first (of one job and its matrix expansions)."""
    cfg = as_config(config)
    with _engine(cfg, create=False) as engine:
        if not sa.inspect(engine).has_table("scoring_runs"):
            if job is not None:
                select_jobs(cfg, [job], False)
            return []
        names = _ledger_jobs(cfg, engine, job)
        start = None
        if since is not None:  # midnight of that date in the configured time zone
            start = datetime.combine(to_date(since, cfg.timezone, "since"), time.min, tzinfo=ZoneInfo(cfg.timezone))
        return ledger.list_runs(engine, names, limit, status=status, since=start)


def _ledger_jobs(cfg: Config, engine: Engine, job: str | None) -> list[str] | None:
    if job is None:
        return None
    try:
        return select_jobs(cfg, [job], False)
    except ConfigError:
        if ledger.list_runs(engine, job, 1):
            return [job]  # a job no longer in the config, still in the ledger
        raise


def retract(config: ConfigLike, run_id: int, note: str | None = None) -> retracting.Retracted:
    """Remove a published run's rows (its output and shadow rows) in one transaction and mark
    its ledger row ``retracted``: the ``_latest`` views then show what was there before."""
    cfg = as_config(config)
    with _engine(cfg, create=False) as engine:
        return retracting.retract(engine, int(run_id), note)


def backfill(
    config: ConfigLike,
    job: str,
    start: date | datetime | str,
    end: date | datetime | str,
    *,
    rerun: bool = False,
    fail_fast: bool = False,
    allow_future: bool = False,
    parallel: int | None = None,
    on_date: DateFn | None = None,
    on_progress: ProgressFn | None = None,
) -> backfilling.BackfillResults:
    """Score ``job`` (and its matrix expansions) for each as_of from ``start`` to ``end``
    (inclusive), each date committed on its own. Dates whose published set was made by
    the same model version are skipped (``already_done``) unless ``rerun``; the rest go on
    after a failed date unless ``fail_fast``."""
    cfg = as_config(config)
    names = select_jobs(cfg, [job], False)
    days = backfilling.date_range(to_date(start, cfg.timezone, "start"), to_date(end, cfg.timezone, "end"))
    check_not_future(days[-1], cfg.timezone, cfg.defaults.future_days, allow_future)
    workers = _parallel(cfg, parallel)
    with _engine(cfg, pool_size=4 * min(workers, len(names)) + 2) as engine, _threads(cfg):
        inv = Invocation(cfg, engine, Trigger.BACKFILL.value, workers, on_progress=on_progress)
        return backfilling.backfill(inv, names, days, rerun=rerun, fail_fast=fail_fast, on_date=on_date)


def next_fires(
    config: ConfigLike = None, count: int = 5, *, after: datetime | None = None, jobs: Sequence[str] = ()
) -> list[scheduler.Fire]:
    """The next ``count`` fire times and as_of values of each scheduled job. Runs nothing,
    needs no database.

    ``after`` defaults to now; a naive datetime is read in the configured timezone."""
    if count < 1:
        raise UsageError("count (--next) must be at least 1")
    return scheduler.upcoming(as_config(config), count, after, jobs)


def schedule(config: ConfigLike = None, jobs: Sequence[str] = ()) -> int:
    """Run the scheduler daemon in this process until SIGTERM/SIGINT; returns 0.

    Every job with a ``schedule:`` (or only ``jobs``) runs on its cron in the
    configured timezone; missed fires within ``scheduler.catch_up_hours`` run once on
    start. SIGHUP re-reads the config file (given a Config object, there is none to
    re-read). See :mod:`batch_scorer.scheduling.daemon`."""
    cfg = as_config(config)
    source = cfg.source_file
    reload = None if isinstance(config, Config) or source is None else (lambda: load_config(source))
    with _engine(cfg, pool_size=6) as engine, _threads(cfg):
        return scheduler.Daemon(cfg, engine, jobs, reload=reload).serve()


__all__ = [
    "Check", "ConfigLike", "InitReport", "RunResult", "RunResults", "as_config", "backfill", "init_db",
    "next_fires", "retract", "run", "runs", "schedule", "select_jobs", "validate",
]
