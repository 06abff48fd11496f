"""``batch-scorer backfill JOB --start D --end D``: score a range of as_of dates.

Each as_of is one normal invocation of the job and its matrix expansions
(trigger ``backfill``; jobs that read the same rows read them once), each job
committed on its own. An as_of whose published set was already made by the
same model version is skipped unless ``rerun`` (checked up front from the
ledger, and again under the job's lock, so two backfills over one range never
score a date twice). Models are resolved once for the whole range. A failed
date is reported and the others continue (``fail_fast`` stops at the first;
the dates after it are reported *not attempted*). Killed at any point, the same
command finishes what is left: the ledger says which dates are done, and the
next run marks the killed run's row ``abandoned``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

import sqlalchemy as sa

from batch_scorer.core.checks import check_score_contract
from batch_scorer.errors import EXIT_LOCKED, DatabaseError, UsageError
from batch_scorer.masking import first_line, mask_text
from batch_scorer.runtime.jobs import Invocation, run_jobs
from batch_scorer.runtime.outcome import RunResult, RunResults, Status
from batch_scorer.runtime.plan import RunPlan, build_plan, resolve_models
from batch_scorer.runtime.progress import DateFn
from batch_scorer.runtime.run import SkipCheck
from batch_scorer.storage import ledger
from batch_scorer.storage.ddl import create_tool_tables

log = logging.getLogger(__name__)

MAX_DAYS = 366 * 20


def date_range(first: date, last: date, names: tuple[str, str] = ("start", "end")) -> list[date]:
    """Every day from ``first`` to ``last`` inclusive; a backwards range is a :class:`UsageError`
    (``names``: what the caller calls the two ends, e.g. ``--start`` on the command line)."""
    if last < first:
        raise UsageError(f"{names[1]} {last} is before {names[0]} {first}; give the earlier date as {names[0]}")
    days = (last - first).days + 1
    if days > MAX_DAYS:
        raise UsageError(f"the range {first}..{last} has {days} days; split it (at most {MAX_DAYS})")
    return [first + timedelta(days=i) for i in range(days)]


class BackfillResults(RunResults):
    """A backfill's results (one per job and date) and the dates it never attempted."""

    def __init__(self, results: Sequence[RunResult] = (), not_attempted: Sequence[tuple[str, date]] = ()) -> None:
        super().__init__(results)
        self.not_attempted = list(not_attempted)

    def counts(self) -> dict[str, int]:
        """succeeded, already_done, failed (incl. invalid and skipped upstream), locked, not_attempted."""
        c = Counter("locked" if r.exit_code == EXIT_LOCKED else
                    r.status.value if r.status in (Status.SUCCEEDED, Status.ALREADY_DONE) else "failed"
                    for r in self)
        return {"succeeded": c["succeeded"], "already_done": c["already_done"], "failed": c["failed"],
                "locked": c["locked"], "not_attempted": len(self.not_attempted)}


def backfill(
    inv: Invocation, names: Sequence[str], days: Sequence[date], *, rerun: bool = False,
    fail_fast: bool = False, on_date: DateFn | None = None,
) -> BackfillResults:
    """Score ``names`` for each of ``days`` (module doc). Bad input (a job's model or source)
    raises before anything is written; failures of a date are results."""
    plans = _resolve(inv, names, days[0])
    done = _done(inv, plans, rerun)
    if not rerun:
        inv.skip_if = _already(inv)
    log.info("backfill %s %s..%s: %d date(s) x %d job(s), %d already succeeded with model %s%s",
             ", ".join(names), days[0], days[-1], len(days), len(names),
             sum(len(d & set(days)) for d in done.values()),
             ", ".join(sorted({p.version for p in plans})), " (ignored: rerun)" if rerun else "")
    out = BackfillResults()
    for i, as_of in enumerate(days):
        if on_date is not None:
            on_date(as_of, None)
        todo = [n for n in names if as_of not in done[n]]
        results = run_jobs(inv, todo, as_of) if todo else RunResults()
        by_job = {r.job: r for r in results}
        day = [by_job.get(n) or _already_done(n, as_of, plans) for n in names]
        out.extend(day)
        if on_date is not None:
            on_date(as_of, day)
        for r in day:
            _log_date(r)
        if fail_fast and any(not r.ok for r in day):
            out.not_attempted = [(n, d) for d in days[i + 1:] for n in names]
            log.error("backfill: stopping at the first failure (--fail-fast); %d date(s) not attempted "
                      "(%d job-date(s))", len(days) - i - 1, len(out.not_attempted))
            break
    return out


@dataclass(frozen=True)
class _Job:
    """What the whole range needs of a job, resolved once: its model version and output table."""

    job: str
    version: str
    output_name: str


def _resolve(inv: Invocation, names: Sequence[str], first: date) -> list[_Job]:
    """Each job's model (and, for a job with no upstream job in the backfill, its whole plan:
    source and output checked) before anything is written; bad input raises. A job after
    others of the backfill may read what they publish: its source is checked on each date,
    once they have run (as ``run`` does)."""
    in_batch = set(names)
    out = []
    for name in names:
        job = inv.cfg.job(name)
        if any(d in in_batch for d in job.depends_on):
            champion, _ = resolve_models(inv.engine, job, inv.models)
            check_score_contract(name, job.output.score, champion.model)
            out.append(_Job(name, str(champion.stamp.version), job.output.table))
        else:
            plan = build_plan(inv.cfg, inv.engine, name, first, inv.trigger, inv.models, inv.probes)
            out.append(_Job(name, str(plan.champion.stamp.version), plan.output_name))
    return out


def _done(inv: Invocation, plans: Sequence[_Job], rerun: bool) -> dict[str, set[date]]:
    try:
        create_tool_tables(inv.engine)
        if rerun:
            return {p.job: set() for p in plans}
        return {p.job: ledger.published_as_ofs(inv.engine, p.job, p.version) for p in plans}
    except sa.exc.SQLAlchemyError as exc:
        raise DatabaseError(f"backfill: cannot read the ledger: {mask_text(first_line(exc))}") from exc


def _already(inv: Invocation) -> SkipCheck:
    def already(plan: RunPlan) -> str | None:
        # Under the job's lock: another backfill may have scored it meanwhile.
        version = str(plan.champion.stamp.version)
        if plan.as_of in ledger.published_as_ofs(inv.engine, plan.job, version):
            return f"already published by model {version}"
        return None

    return already


def _already_done(name: str, as_of: date, plans: Sequence[_Job]) -> RunResult:
    plan = next(p for p in plans if p.job == name)
    return RunResult(name, Status.ALREADY_DONE, as_of, model_version=plan.version, output_table=plan.output_name,
                     error=f"already published by model {plan.version}")


def _log_date(result: RunResult) -> None:
    what = f"backfill {result.job} as_of {result.as_of}"
    if result.status == Status.SUCCEEDED:
        log.info("%s: succeeded, run %s, %d rows, %.1fs", what, result.run_id, result.rows_scored, result.seconds)
    elif result.status == Status.ALREADY_DONE:
        log.info("%s: skipped, %s", what, result.error)
    else:
        log.info("%s: %s (run %s)", what, result.status, result.run_id)

