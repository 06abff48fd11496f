"""Many jobs in one process: dependencies, shared reads, parallel groups, retries.

:func:`run_batch` takes the plans of one invocation (``run`` with several jobs,
``run --all``, a backfill date, the daemon's fires) and runs them:

* a job runs after the jobs it depends on (``after:``) that are in the same
  invocation; a job whose upstream job did not succeed is not run: it is
  reported ``skipped`` (exit 1) and recorded so in the ledger;
* jobs that are ready at the same time and read the same source rows (same
  table or query, filters, parameters, time zone, as_of and chunk size) form one
  group and read them once;
* at most ``parallel`` jobs run at once (a group counts each of its jobs), in
  groups on worker threads; a lone group runs on the calling thread, so a
  signal interrupts it at once;
* a group's jobs that failed with a transient error (a lost connection, a lost
  lock session) run again, with backoff, up to ``retries`` more times; each
  attempt has its own ledger row.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

from batch_scorer.errors import EXIT_LOCKED, EXIT_RUN_FAILED
from batch_scorer.executors.base import Cancel
from batch_scorer.masking import first_line, mask_text
from batch_scorer.runtime.outcome import RunResult, Status
from batch_scorer.runtime.run import Attempt, GroupContext, run_group
from batch_scorer.runtime.spec import RunPlan
from batch_scorer.storage import ledger
from batch_scorer.storage.ddl import refresh_statistics
from batch_scorer.storage.retry import RetryPolicy, is_transient
from batch_scorer.storage.schema import RunStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchOptions:
    """How an invocation runs its jobs."""

    parallel: int = 1
    retry: RetryPolicy = RetryPolicy()
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class BatchJob:
    """A job of the batch before it is planned: its plan is built only once its upstream
    jobs are done (a job that reads what they publish can only be checked then)."""

    name: str
    as_of: date
    trigger: str
    depends_on: tuple[str, ...] = ()


# Builds the plans of jobs ready together (a wave: their upstream jobs are done), or the
# result of each that cannot run (invalid), by name.
PlanFn = Callable[[Sequence[BatchJob]], "dict[str, RunPlan | RunResult]"]


def group_key(plan: RunPlan) -> tuple[object, ...]:
    """Plans with equal keys read the same rows: one read serves them all."""
    return (plan.source.identity(), plan.as_of, plan.settings.chunk_size)


def run_batch(
    ctx: GroupContext, jobs: Sequence[BatchJob], plan_for: PlanFn, options: BatchOptions, cancel: Cancel
) -> list[RunResult]:
    """Run every job (module doc); one result per job, in the jobs' order."""
    names = {j.name for j in jobs}
    deps = {j.name: [d for d in j.depends_on if d in names] for j in jobs}
    waiting = {j.name: j for j in jobs}
    planned: dict[str, RunPlan] = {}
    done: dict[str, RunResult] = {}
    try:
        _run_all(ctx, jobs, plan_for, options, cancel, deps, waiting, planned, done)
    except KeyboardInterrupt as exc:
        # What finished before the signal: the CLI prints it (a cron log shows what was published).
        _store_partial(done, exc)
        exc.results = [done[j.name] for j in jobs if j.name in done]  # type: ignore[attr-defined]
        raise
    return [done[j.name] for j in jobs]


def _run_all(ctx: GroupContext, jobs: Sequence[BatchJob], plan_for: PlanFn, options: BatchOptions, cancel: Cancel,
             deps: dict[str, list[str]], waiting: dict[str, BatchJob], planned: dict[str, RunPlan],
             done: dict[str, RunResult]) -> None:
    with cf.ThreadPoolExecutor(max_workers=max(1, options.parallel), thread_name_prefix="bs-job") as pool:
        running: dict[cf.Future[list[RunResult]], list[RunPlan]] = {}
        while waiting or planned or running:
            _skip_orphans(ctx, waiting, deps, done)
            _plan_ready(ctx, waiting, deps, done, planned, plan_for)
            free = options.parallel - sum(len(g) for g in running.values())
            for group in _groups(planned, free):
                for plan in group:
                    del planned[plan.job]
                if not running and not planned and not waiting:  # the last group: on this thread
                    _store(done, group, _with_retries(ctx, group, options))
                else:
                    running[pool.submit(_with_retries, ctx, group, options)] = group
            if running:
                _collect(running, done, cancel)


def _plan_ready(ctx: GroupContext, waiting: dict[str, BatchJob], deps: dict[str, list[str]],
                done: dict[str, RunResult], planned: dict[str, RunPlan], plan_for: PlanFn) -> None:
    ready = [n for n in waiting if all(d in done for d in deps[n])]
    if not ready:
        return
    for name in ready:
        # What the upstream jobs just published: statistics first, for these jobs' queries.
        for table in dict.fromkeys(done[d].output_table for d in deps[name] if done[d].output_table):
            if table not in ctx.analyzed:
                ctx.analyzed.add(table)
                refresh_statistics(ctx.engine, table)
    outcomes = plan_for([waiting.pop(name) for name in ready])
    for name in ready:
        outcome = outcomes[name]
        if isinstance(outcome, RunResult):
            done[name] = outcome
        else:
            planned[name] = outcome


def _collect(running: dict[cf.Future[list[RunResult]], list[RunPlan]], done: dict[str, RunResult],
             cancel: Cancel) -> None:
    try:
        finished, _ = cf.wait(list(running), timeout=0.5, return_when=cf.FIRST_COMPLETED)
    except KeyboardInterrupt as exc:
        # Runs on worker threads cannot see the signal: tell them, wait for
        # them to roll back and record themselves, then stop.
        cancel.set(getattr(exc, "signum", 2))
        cf.wait(list(running))
        for future, group in running.items():
            error = future.exception()
            if error is None:  # finished (or rolled back and recorded) without the signal
                _store(done, group, future.result())
            else:
                _store_partial(done, error)
        raise
    for future in finished:
        _store(done, running.pop(future), future.result())


def _store(done: dict[str, RunResult], group: list[RunPlan], results: list[RunResult]) -> None:
    for plan, result in zip(group, results, strict=True):
        done[plan.job] = result


def _store_partial(done: dict[str, RunResult], interrupt: BaseException) -> None:
    """The attempts a group made before an interrupt left it (see :func:`run_group`)."""
    for attempt in getattr(interrupt, "attempts", ()):
        done.setdefault(attempt.plan.job, attempt.result)


def _groups(planned: dict[str, RunPlan], free: int) -> list[list[RunPlan]]:
    """Groups of planned jobs (same source rows together), together at most ``free`` jobs."""
    groups: dict[tuple[object, ...], list[RunPlan]] = {}
    for plan in planned.values():
        groups.setdefault(group_key(plan), []).append(plan)
    out: list[list[RunPlan]] = []
    for group in groups.values():
        while group and free > 0:
            take, group = group[:free], group[free:]
            out.append(take)
            free -= len(take)
    return out


def _skip_orphans(ctx: GroupContext, waiting: dict[str, BatchJob], deps: dict[str, list[str]],
                  done: dict[str, RunResult]) -> None:
    """Jobs whose upstream job finished without succeeding are skipped (exit 1; exit 3 when
    another run held the upstream jobs' locks), recorded."""
    for name in list(waiting):
        failed = [d for d in deps[name] if d in done and done[d].status != Status.SUCCEEDED]
        if not failed:
            continue
        job = waiting.pop(name)
        why, code = _skip_reason(job, failed, done)
        log.warning("%s", why)
        run_id = None
        try:
            run_id = ledger.record_attempt(ctx.engine, job=name, as_of=job.as_of, trigger=job.trigger,
                                           status=RunStatus.SKIPPED, error=why)
        except Exception:  # noqa: BLE001 - the result still says why
            log.debug("job %s: could not record the skipped attempt", name)
        done[name] = RunResult(name, Status.SKIPPED, job.as_of, run_id=run_id, error=why, exit_code=code)
        _skip_orphans(ctx, waiting, deps, done)  # its own downstream jobs too
        return


def _skip_reason(job: BatchJob, failed: list[str], done: dict[str, RunResult]) -> tuple[str, int]:
    """Why ``job`` is not run, and its exit code. An upstream job skipped because another run
    held its lock (a cron overlap: that run goes on) makes this a lock skip too, exit 3."""
    held = [d for d in failed if done[d].exit_code == EXIT_LOCKED]
    if len(held) == len(failed):
        return (f"job {job.name!r}: not run because another run held the lock of its upstream job {held[0]!r} "
                f"for as_of {job.as_of}; the command holding it runs this job after it if it includes it, else run "
                "it again once that run has finished", EXIT_LOCKED)
    upstream = next(d for d in failed if d not in held)
    return (f"job {job.name!r}: not run because its upstream job {upstream!r} "
            f"{done[upstream].status} (run {done[upstream].run_id}) for as_of {job.as_of}", EXIT_RUN_FAILED)


def _with_retries(ctx: GroupContext, group: list[RunPlan], options: BatchOptions) -> list[RunResult]:
    """Run a group; re-run its jobs that failed with a transient error (module doc)."""
    results: dict[str, RunResult] = {}
    todo = list(group)
    attempts = options.retry.retries + 1
    for attempt in range(1, attempts + 1):
        wait = options.retry.delay(attempt)
        retry: list[RunPlan] = []
        for a in run_group(ctx, todo):
            results[a.plan.job] = a.result
            if a.error is not None and is_transient(a.error):
                _log_retry(a, attempt, attempts, wait)
                if attempt < attempts:
                    retry.append(a.plan)
        if not retry:
            break
        options.sleep(wait)
        todo = retry
    return [results[p.job] for p in group]


def _log_retry(attempt: Attempt, number: int, total: int, wait: float) -> None:
    exc = attempt.error
    assert exc is not None
    what = f"job {attempt.plan.job} run {attempt.result.run_id} as_of {attempt.plan.as_of}"
    cause = mask_text(first_line(_root(exc)))
    if number < total:
        log.warning("%s: attempt %d of %d failed with a transient database error (%s); retrying the "
                    "whole run in %.1fs", what, number, total, cause, wait)
    elif total > 1:
        log.error("%s: attempt %d of %d failed with a transient database error (%s); giving up",
                  what, number, total, cause)


def _root(exc: BaseException) -> BaseException:
    """The driver's own error under our wrappers (the real reason, not "RunFailed")."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc
