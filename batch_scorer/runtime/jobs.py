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
from batch_scorer.runtime.batch import BatchJob, BatchOptions, run_batch
from batch_scorer.runtime.outcome import RunResult, RunResults, from_exception
from batch_scorer.runtime.plan import (
    ModelCache,
    RunPlan,
    SourceProbes,
    build_plan,
    with_monitoring,
    with_shared_outputs,
)
from batch_scorer.runtime.run import GroupContext, ProgressFn, SkipCheck
from batch_scorer.storage import ledger
from batch_scorer.storage.catalog import catalog
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
    probes: SourceProbes = field(default_factory=SourceProbes)


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
    """Plan and run ``names`` for ``as_of`` (or each job's own default), one result per job.

    Jobs with no upstream job in this invocation are planned first: when none of
    them can run, nothing at all is written. A job that runs after others is
    planned once they are done (it may read what they publish), together with the
    other jobs ready then (one set of lookups; shared output tables defined alike)."""
    with executor_for(inv) as executor:
        return _run_jobs(inv, executor, names, as_of)


def _run_jobs(inv: Invocation, executor: Executor, names: Sequence[str], as_of: date | None) -> RunResults:
    catalog(inv.engine).clear()  # a long-lived engine (the daemon) sees DDL made since its last batch
    in_batch = set(names)
    jobs = [BatchJob(n, as_of or job_as_of(inv.cfg, n), inv.trigger,
                     tuple(d for d in inv.cfg.job(n).depends_on if d in in_batch)) for n in names]
    early = _plans(inv, [j for j in jobs if not j.depends_on])
    if len(early) == len(jobs) and all(isinstance(p, RunResult) for p in early.values()):
        return RunResults(_recorded(inv, early[j.name]) for j in jobs)  # type: ignore[arg-type]
    try:
        create_tool_tables(inv.engine)
    except (BatchScorerError, sa.exc.SQLAlchemyError) as exc:
        return RunResults(p if isinstance(p := early.get(j.name), RunResult) else from_exception(j.name, j.as_of, exc)
                          for j in jobs)

    last = _last_published(inv.engine, [p.job for p in early.values() if isinstance(p, RunPlan)])

    def plan_for(wave: Sequence[BatchJob]) -> dict[str, RunPlan | RunResult]:
        # Jobs after others are planned once those are done, together (one set of lookups).
        later = [j for j in wave if j.name not in early]
        outcomes = {**{j.name: early.pop(j.name) for j in wave if j.name in early}, **_plans(inv, later)}
        if later:
            last.update(_last_published(inv.engine, [j.name for j in later]))
        for name, outcome in list(outcomes.items()):
            if isinstance(outcome, RunResult):
                outcomes[name] = _recorded(inv, outcome)
            else:
                _log_model_change(outcome, last.pop(name, None))
        return outcomes

    ctx = GroupContext(inv.engine, executor, skip_if=inv.skip_if, on_progress=inv.on_progress,
                       record_lock_skips=inv.trigger != Trigger.SCHEDULE)
    options = BatchOptions(parallel=inv.parallel,
                           retry=RetryPolicy(inv.cfg.database.retries, inv.cfg.database.retry_backoff_seconds))
    return RunResults(run_batch(ctx, jobs, plan_for, options, inv.cancel))


def _plans(inv: Invocation, jobs: Sequence[BatchJob]) -> dict[str, RunPlan | RunResult]:
    """The plans of jobs planned together, their drift lookups done in one go for all."""
    planned = {j.name: _plan(inv, j, monitoring=False) for j in jobs}
    valid = with_shared_outputs(inv.engine, [p for p in planned.values() if isinstance(p, RunPlan)])
    return {**planned, **{p.job: p for p in with_monitoring(inv.cfg, inv.engine, valid)}}


def _plan(inv: Invocation, job: BatchJob, monitoring: bool = True) -> RunPlan | RunResult:
    try:
        return build_plan(inv.cfg, inv.engine, job.name, job.as_of, inv.trigger, inv.models, inv.probes,
                          monitoring=monitoring)
    except BatchScorerError as exc:
        log.info("job %s as_of %s: not run: invalid (exit 2)", job.name, job.as_of)
        return from_exception(job.name, job.as_of, exc)


def _last_published(engine: Engine, jobs: Sequence[str]) -> dict[str, ledger.RunRecord | None]:
    """Each job's last published run (None: none yet); empty when the ledger cannot be read
    (the model-change line is only a courtesy)."""
    try:
        found = ledger.last_published_many(engine, jobs)
    except sa.exc.SQLAlchemyError as exc:
        log.debug("could not read the jobs' last published runs: %s", mask_text(first_line(exc)))
        return {}
    return {job: found.get(job) for job in jobs}


def _log_model_change(plan: RunPlan, last: ledger.RunRecord | None) -> None:
    """One line when a job is about to score with another model than its last published run
    (``last``): a model file replaced in place is otherwise picked up without a word."""
    stamp = plan.champion.stamp
    if last is None:
        return
    if last.model_version != stamp.version:
        log.warning("job %s: model version changed from %s (run %d) to %s", plan.job, last.model_version,
                    last.run_id, stamp.version)
    elif last.model_sha256 and stamp.sha256 and last.model_sha256 != stamp.sha256:
        # The same version label on other bytes: a file replaced without a new version.
        log.warning("job %s: model file changed (sha256 %.12s... to %.12s...) but its version %s did not "
                    "(last published by run %d)", plan.job, last.model_sha256, stamp.sha256, stamp.version,
                    last.run_id)


def _recorded(inv: Invocation, result: RunResult) -> RunResult:
    """An invalid job's attempt in the ledger (``runs`` shows why last night's run did not happen)."""
    assert result.as_of is not None and result.error is not None
    if not _ledger_exists(inv.engine):
        return result  # nothing is created for a job that cannot run
    try:
        run_id = ledger.record_attempt(inv.engine, job=result.job, as_of=result.as_of, trigger=inv.trigger,
                                       status=RunStatus.INVALID, error=result.error)
    except sa.exc.SQLAlchemyError as exc:
        log.warning("job %s: could not record the invalid attempt: %s", result.job, mask_text(first_line(exc)))
        return result
    return dataclasses.replace(result, run_id=run_id)


def _ledger_exists(engine: Engine) -> bool:
    return sa.inspect(engine).has_table("scoring_runs")
