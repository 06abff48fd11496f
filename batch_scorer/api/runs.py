"""Scoring: ``run``, ``backfill``, and the ledger: ``runs``, ``retract``."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch_scorer.api._common import (
    ConfigLike,
    as_config,
    as_of_date,
    open_engine,
    parallel_jobs,
    pool_size_for,
    select_jobs,
    threads,
    trigger_name,
)
from batch_scorer.config import Config
from batch_scorer.dates import check_not_future, to_date
from batch_scorer.errors import ConfigError, UsageError
from batch_scorer.runtime import backfill as backfilling
from batch_scorer.runtime.jobs import Invocation, run_jobs
from batch_scorer.runtime.outcome import RunResults
from batch_scorer.runtime.plan import ModelCache
from batch_scorer.runtime.progress import DateFn, ProgressFn
from batch_scorer.storage import ledger
from batch_scorer.storage import retract as retracting
from batch_scorer.storage.schema import RunStatus, Trigger

log = logging.getLogger(__name__)


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
    day = as_of_date(cfg, as_of, allow_future)
    workers = parallel_jobs(cfg, parallel)
    with open_engine(cfg, pool_size=pool_size_for(min(workers, len(names)))) as engine, threads(cfg):
        inv = Invocation(cfg, engine, trigger_name(trigger), workers, on_progress=on_progress)
        results = run_jobs(inv, names, day)
    return results.raise_for_failures() if check else results


def runs(
    config: ConfigLike = None, job: str | None = None, limit: int = 20, *,
    status: Sequence[str] = (), since: date | datetime | str | None = None,
) -> list[ledger.RunRecord]:
    """The latest runs from the ledger, newest first (of one job and its matrix expansions).
    ``status``: only runs of these statuses (:class:`UsageError` for one that is none)."""
    cfg = as_config(config)
    status = _statuses(status)
    with open_engine(cfg, create=False) as engine:
        if not sa.inspect(engine).has_table("scoring_runs"):
            if job is not None:
                select_jobs(cfg, [job], False)
            return []
        names = _ledger_jobs(cfg, engine, job)
        start = None
        if since is not None:  # midnight of that date in the configured time zone
            start = datetime.combine(to_date(since, cfg.timezone, "since"), time.min, tzinfo=ZoneInfo(cfg.timezone))
        return ledger.list_runs(engine, names, limit, status=status, since=start)


def _statuses(given: Sequence[str]) -> list[str]:
    """``given`` as ledger statuses: any case; one that is not a status is a usage error."""
    known = [s.value for s in RunStatus]
    out = []
    for text in given:
        if text.strip().lower() not in known:
            raise UsageError(f"--status {text!r} is not a run status; use one of: {', '.join(known)}")
        out.append(text.strip().lower())
    return out


def _ledger_jobs(cfg: Config, engine: Engine, job: str | None) -> list[str] | None:
    if job is None:
        return None
    try:
        names = select_jobs(cfg, [job], False)
    except ConfigError:
        if former := ledger.job_names(engine, job):
            return former  # a job (or matrix) no longer in the config, still in the ledger
        raise
    # Expansions no longer in the config (a value taken out of the matrix) keep their runs.
    return names + [n for n in ledger.job_names(engine, job) if n not in names]


def retract(config: ConfigLike, run_id: int, note: str | None = None) -> retracting.Retracted:
    """Remove a published run's rows (its output and shadow rows) in one transaction and mark
    its ledger row ``retracted``: the ``_latest`` views then show what was there before."""
    cfg = as_config(config)
    with open_engine(cfg, create=False) as engine:
        return retracting.retract(engine, int(run_id), note)


def backfill(
    config: ConfigLike,
    job: str | Sequence[str] | None,
    start: date | datetime | str,
    end: date | datetime | str,
    *,
    all_jobs: bool = False,
    rerun: bool = False,
    fail_fast: bool = False,
    allow_future: bool = False,
    parallel: int | None = None,
    on_date: DateFn | None = None,
    on_progress: ProgressFn | None = None,
    version: int | None = None,
) -> backfilling.BackfillResults:
    """Score ``job`` (and its matrix expansions; or several jobs, a list; or every job,
    ``job=()`` with ``all_jobs=True``) for each as_of from ``start`` to ``end``
    (inclusive), each date committed on its own; on each date, jobs run after the jobs
    of the backfill they depend on (``after:``). Dates whose published set was made by
    the same model version are skipped (``already_done``) unless ``rerun``; the rest go on
    after a failed date unless ``fail_fast``. A registry model's alias is resolved once for
    the whole range; ``version`` pins a registry version instead (every job must then use
    model.registry)."""
    cfg = as_config(config)
    if version is not None and (isinstance(version, bool) or not isinstance(version, numbers.Integral)
                                or version < 1):
        raise UsageError(f"version must be a registry version number >= 1, not {version!r}")
    version = int(version) if version is not None else None  # a numpy integer from a DataFrame too
    names = select_jobs(cfg, [job] if isinstance(job, str) else (job or ()), all_jobs)
    days = backfilling.date_range(to_date(start, cfg.timezone, "start"), to_date(end, cfg.timezone, "end"))
    check_not_future(days[-1], cfg.timezone, cfg.defaults.future_days, allow_future)
    workers = parallel_jobs(cfg, parallel)
    with open_engine(cfg, pool_size=pool_size_for(min(workers, len(names)))) as engine, threads(cfg):
        inv = Invocation(cfg, engine, Trigger.BACKFILL.value, workers, on_progress=on_progress,
                         models=ModelCache(version=version))
        return backfilling.backfill(inv, names, days, rerun=rerun, fail_fast=fail_fast, on_date=on_date)


