"""From job names to results: what ``run``, ``backfill`` and the daemon all do.

:func:`run_jobs` resolves each job's as_of (the date given, else the job's
``as_of:`` rule applied to now), builds each job's plan (a job that cannot run
is reported ``invalid``, exit 2, and recorded so in the ledger, with nothing
scored), and runs the valid plans as one batch
(:func:`batch_scorer.runtime.batch.run_batch`) on the configured executor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch_scorer.config import Config
from batch_scorer.dates import as_of_for
from batch_scorer.errors import BatchScorerError
from batch_scorer.executors.base import Cancel, Executor
from batch_scorer.executors.local import LocalExecutor
from batch_scorer.executors.threads import ThreadSettings
from batch_scorer.masking import first_line, mask_text
from batch_scorer.runtime.batch import BatchOptions, run_batch
from batch_scorer.runtime.outcome import RunResult, RunResults, from_exception
from batch_scorer.runtime.plan import ModelCache, RunPlan, build_plan
from batch_scorer.runtime.run import GroupContext, ProgressFn, SkipCheck
from batch_scorer.storage import ledger
from batch_scorer.storage.ddl import create_tool_tables
from batch_scorer.storage.retry import RetryPolicy
from batch_scorer.storage.schema import RunStatus, Trigger

log = logging.getLogger(__name__)


@dataclass
class Invocation:
    """What one invocation shares across its jobs (and, for a backfill, its dates)."""

    cfg: Config
    engine: Engine
    trigger: str
    parallel: int
    skip_if: SkipCheck | None = None
    on_progress: ProgressFn | None = None
    cancel: Cancel = field(default_factory=Cancel)
    models: ModelCache = field(default_factory=ModelCache)


def threads_of(cfg: Config) -> ThreadSettings:
    """The thread knobs of the configuration's ``runtime:`` section, resolved."""
    return ThreadSettings(cfg.runtime.resolved_model_threads(), cfg.runtime.resolved_scoring_threads())


def job_as_of(cfg: Config, name: str, now: datetime | None = None) -> date:
    """The as_of a run of ``name`` scores when none is given: its ``as_of:`` rule, applied to now."""
    return as_of_for(cfg.job(name).as_of, now or datetime.now(UTC), cfg.timezone)


def executor_for(inv: Invocation) -> contextlib.AbstractContextManager[Executor]:
    """The configured executor (``executor.kind``), closed when the invocation ends.

    ``dask`` without the extra installed is a ConfigError here, before any job is
    planned; its cluster is reached (or started) by the first run that streams."""
    section = inv.cfg.executor
    if section.kind == "dask":
        from batch_scorer.executors.dask import DaskExecutor, DaskSettings

        settings = DaskSettings(section.address, section.partitions, inv.cfg.runtime.model_threads or 1)
        return DaskExecutor(settings, inv.cancel)
    return contextlib.nullcontext(LocalExecutor(threads_of(inv.cfg), inv.cancel))


def run_jobs(inv: Invocation, names: Sequence[str], as_of: date | None = None) -> RunResults:
    """Plan and run ``names`` for ``as_of`` (or each job's own default), one result per job."""
    with executor_for(inv) as executor:
        return _run_jobs(inv, executor, names, as_of)


def _run_jobs(inv: Invocation, executor: Executor, names: Sequence[str], as_of: date | None) -> RunResults:
    plans: list[RunPlan] = []
    results: dict[str, RunResult] = {}
    for name in names:
        day = as_of or job_as_of(inv.cfg, name)
        try:
            plans.append(build_plan(inv.cfg, inv.engine, name, day, inv.trigger, inv.models))
        except BatchScorerError as exc:
            log.warning("job %s as_of %s: cannot run: %s", name, day, exc)
            results[name] = from_exception(name, day, exc)
    if plans:
        try:
            create_tool_tables(inv.engine)
        except (BatchScorerError, sa.exc.SQLAlchemyError) as exc:
            for plan in plans:
                results[plan.job] = from_exception(plan.job, plan.as_of, exc)
            return RunResults(results[n] for n in names)
    # An invalid job writes nothing, but where the ledger exists its attempt is
    # recorded: `runs` then says why last night's run did not happen.
    if results and sa.inspect(inv.engine).has_table("scoring_runs"):
        for name, result in results.items():
            results[name] = _recorded(inv, result)
    ctx = GroupContext(inv.engine, executor, skip_if=inv.skip_if, on_progress=inv.on_progress,
                       record_lock_skips=inv.trigger != Trigger.SCHEDULE)
    options = BatchOptions(parallel=inv.parallel,
                           retry=RetryPolicy(inv.cfg.database.retries, inv.cfg.database.retry_backoff_seconds))
    for plan, result in zip(plans, run_batch(ctx, plans, options, inv.cancel), strict=True):
        results[plan.job] = result
    return RunResults(results[n] for n in names)


def _recorded(inv: Invocation, result: RunResult) -> RunResult:
    """An invalid job's attempt in the ledger (``runs`` shows why last night's run did not happen)."""
    assert result.as_of is not None and result.error is not None
    try:
        run_id = ledger.record_attempt(inv.engine, job=result.job, as_of=result.as_of, trigger=inv.trigger,
                                       status=RunStatus.INVALID, error=result.error)
    except sa.exc.SQLAlchemyError as exc:
        log.warning("job %s: could not record the invalid attempt: %s", result.job, mask_text(first_line(exc)))
        return result
    return dataclasses.replace(result, run_id=run_id)


def run_job(
    cfg: Config, engine: Engine, name: str, as_of: date | None = None, trigger: str = "manual",
    on_progress: ProgressFn | None = None, skip_if: SkipCheck | None = None,
) -> RunResult:
    """One job for one as_of; raises what made it fail (LockHeld, BatchScorerError...)
    instead of returning it, for callers that handle each failure themselves."""
    inv = Invocation(cfg, engine, trigger, 1, skip_if=skip_if, on_progress=on_progress)
    result = run_jobs(inv, [name], as_of)[0]
    if result.cause is not None:
        raise result.cause
    return result
