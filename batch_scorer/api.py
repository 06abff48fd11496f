"""The Python API: every CLI command is one function here.

Use it from a notebook exactly as the CLI does::

    from batch_scorer import api
    results = api.run("config.yaml", ["churn"])
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import sqlalchemy as sa

from batch_scorer.config import Config, load_config
from batch_scorer.errors import (
    EXIT_BAD_INPUT,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_RUN_FAILED,
    BatchScorerError,
    DatabaseError,
    LockHeld,
    UsageError,
)
from batch_scorer.masking import first_line, mask_text
from batch_scorer.runtime import backfill as backfilling
from batch_scorer.runtime.run import ProgressFn, RunResult, default_as_of, prepare_output, resolve_job, run_job
from batch_scorer.scheduling import daemon as scheduler
from batch_scorer.storage import ledger
from batch_scorer.storage.db import engine_for
from batch_scorer.storage.schema import create_tool_tables

log = logging.getLogger(__name__)

ConfigLike = Config | str | os.PathLike[str] | None


def as_config(config: ConfigLike) -> Config:
    """Accept a loaded Config, a path, or None (``$BATCH_SCORER_CONFIG`` / ./config.yaml)."""
    if isinstance(config, Config):
        return config
    return load_config(config)


def select_jobs(cfg: Config, names: Sequence[str], all_jobs: bool) -> list[str]:
    """The job names to act on; every name is checked against the config."""
    if all_jobs and names:
        raise UsageError("give job names or --all, not both")
    if all_jobs:
        if not cfg.jobs:
            raise UsageError(f"no jobs are defined in {cfg.source_file or 'the config'}")
        return list(cfg.jobs)
    if not names:
        raise UsageError("name at least one job, or pass --all")
    for name in names:
        cfg.job(name)
    return list(dict.fromkeys(names))


def run(
    config: ConfigLike = None,
    jobs: Sequence[str] = (),
    *,
    all_jobs: bool = False,
    as_of: date | None = None,
    trigger: str = "manual",
    on_progress: ProgressFn | None = None,
) -> list[RunResult]:
    """Run jobs one after another. A job's failure is recorded and the next job runs."""
    cfg = as_config(config)
    names = select_jobs(cfg, jobs, all_jobs)
    as_of = as_of or default_as_of(cfg)
    results = []
    with engine_for(cfg.database.url, cfg.database.busy_timeout_seconds) as engine:
        for name in names:
            results.append(run_one(cfg, engine, name, as_of, trigger, on_progress))
    return results


def run_one(
    cfg: Config,
    engine: sa.Engine,
    name: str,
    as_of: date,
    trigger: str,
    on_progress: ProgressFn | None = None,
) -> RunResult:
    """Run one job and turn any error into a result (for loops over many jobs)."""
    try:
        return run_job(cfg, engine, name, as_of, trigger, on_progress)
    except LockHeld as exc:
        log.warning("%s", exc)
        return RunResult(name, "skipped", as_of, error=str(exc), exit_code=EXIT_LOCKED)
    except BatchScorerError as exc:
        status = "invalid" if exc.exit_code == EXIT_BAD_INPUT else "failed"
        return RunResult(name, status, as_of, run_id=exc.run_id, error=str(exc), exit_code=exc.exit_code)
    except sa.exc.SQLAlchemyError as exc:
        message = f"job {name!r}: database error: {mask_text(first_line(exc))}"
        log.error("%s", message)
        return RunResult(name, "failed", as_of, error=message, exit_code=EXIT_RUN_FAILED)


def exit_code(results: Sequence[RunResult]) -> int:
    """One exit code for many runs: 2 bad input, else 1 failed, else 3 skipped, else 0."""
    codes = {r.exit_code for r in results}
    for code in (EXIT_BAD_INPUT, EXIT_RUN_FAILED, EXIT_LOCKED):
        if code in codes:
            return code
    return EXIT_OK


def init_db(config: ConfigLike = None) -> list[str]:
    """Create the tool's tables, and each job's output table and view where its model
    and source are available. Idempotent. Returns one line per thing done or skipped."""
    cfg = as_config(config)
    done = []
    with engine_for(cfg.database.url, cfg.database.busy_timeout_seconds) as engine:
        try:
            create_tool_tables(engine)
        except sa.exc.SQLAlchemyError as exc:
            raise DatabaseError(f"creating the tool's tables failed: {mask_text(first_line(exc))}") from None
        done.append("tables scoring_runs, rejected_rows, job_locks: ready")
        as_of = default_as_of(cfg)
        for name, job in cfg.jobs.items():
            try:
                prepare_output(engine, resolve_job(cfg, engine, name, as_of))
                done.append(f"job {name}: output table {job.output.table} and view "
                            f"{job.output.table}_latest: ready")
            except BatchScorerError as exc:
                done.append(f"job {name}: output table not created yet ({exc})")
    return done


@dataclass(frozen=True)
class Check:
    """The outcome of validating one job."""

    job: str
    ok: bool
    message: str


def validate(config: ConfigLike = None, jobs: Sequence[str] = ()) -> list[Check]:
    """Check config, connection, model (pin, load, features) and source columns. Writes nothing."""
    cfg = as_config(config)
    names = select_jobs(cfg, jobs, all_jobs=not jobs) if cfg.jobs or jobs else []
    checks = []
    with engine_for(cfg.database.url, cfg.database.busy_timeout_seconds) as engine:
        as_of = default_as_of(cfg)
        for name in names:
            try:
                resolved = resolve_job(cfg, engine, name, as_of)
            except BatchScorerError as exc:
                checks.append(Check(name, False, str(exc)))
                continue
            m = resolved.model
            checks.append(Check(
                name,
                True,
                f"model {m.version} ({len(m.features)} features, "
                f"{'classifier' if m.is_classifier else 'regressor'}), source columns present",
            ))
    return checks


def runs(config: ConfigLike = None, job: str | None = None, limit: int = 20) -> list[ledger.RunRecord]:
    """The latest runs from the ledger, newest first."""
    cfg = as_config(config)
    with engine_for(cfg.database.url, cfg.database.busy_timeout_seconds) as engine:
        if not sa.inspect(engine).has_table("scoring_runs"):
            return []
        return ledger.list_runs(engine, job, limit)


def backfill(
    config: ConfigLike,
    job: str,
    start: date | str,
    end: date | str,
    *,
    rerun: bool = False,
    fail_fast: bool = False,
    on_date: backfilling.DateFn | None = None,
    on_progress: ProgressFn | None = None,
) -> list[RunResult]:
    """Score ``job`` for each as_of from ``start`` to ``end`` (inclusive), each committed on its own.

    Dates already succeeded with the same model version are skipped (status
    ``already_done``) unless ``rerun``. Failed dates are results; the rest go on
    unless ``fail_fast``. ``exit_code(results)`` is non-zero if any date failed.
    """
    cfg = as_config(config)
    backfilling.date_range(start, end)  # a bad range is an error before connecting
    with engine_for(cfg.database.url, cfg.database.busy_timeout_seconds) as engine:
        return backfilling.backfill(cfg, engine, job, start, end, rerun=rerun, fail_fast=fail_fast,
                                    on_date=on_date, on_progress=on_progress)


def next_fires(
    config: ConfigLike = None, count: int = 5, *, after: datetime | None = None, jobs: Sequence[str] = ()
) -> list[scheduler.Fire]:
    """The next ``count`` fire times and as_of values of each scheduled job. Runs nothing.

    ``after`` defaults to now; a naive datetime is read in the configured timezone."""
    if count < 1:
        raise UsageError("--next must be at least 1")
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
    with engine_for(cfg.database.url, cfg.database.busy_timeout_seconds) as engine:
        return scheduler.Daemon(cfg, engine, jobs, reload=reload).serve()

