"""``batch-scorer backfill JOB --start D --end D``: score a range of as_of dates.

Each as_of is one normal run (trigger ``backfill``), committed on its own. An
as_of that already has a succeeded run with the same model version is
skipped unless ``rerun`` (checked up front from the ledger, and again under
the job's lock, so two backfills over one range never score a date twice). A
failed date is reported and the others continue (``fail_fast`` stops at the
first). Killed at any point, the same command finishes what is left: the
ledger says which dates succeeded, and the next run marks the killed run's
row ``abandoned``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import date, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch_scorer.config import Config
from batch_scorer.errors import EXIT_BAD_INPUT, EXIT_RUN_FAILED, BatchScorerError, LockHeld, UsageError
from batch_scorer.masking import first_line, mask_text
from batch_scorer.runtime.run import ProgressFn, RunResult, resolve_job, run_job
from batch_scorer.storage import ledger
from batch_scorer.storage.schema import create_tool_tables

log = logging.getLogger(__name__)

TRIGGER = "backfill"
MAX_DAYS = 366 * 20

DateFn = Callable[[date, RunResult | None], None]


def parse_day(value: date | str, what: str) -> date:
    """A date, or an ISO ``YYYY-MM-DD`` string; impossible dates raise :class:`UsageError`."""
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError as exc:
        raise UsageError(f"{what} {value!r} is not a valid date ({exc}); use YYYY-MM-DD, e.g. 2026-01-31") from None


def date_range(start: date | str, end: date | str) -> list[date]:
    """Every day from ``start`` to ``end`` inclusive; a backwards range is a :class:`UsageError`."""
    first, last = parse_day(start, "--start"), parse_day(end, "--end")
    if last < first:
        raise UsageError(f"--end {last} is before --start {first}; give the earlier date as --start")
    days = (last - first).days + 1
    if days > MAX_DAYS:
        raise UsageError(f"the range {first}..{last} has {days} days; split it (at most {MAX_DAYS})")
    return [first + timedelta(days=i) for i in range(days)]


def backfill(
    cfg: Config,
    engine: Engine,
    name: str,
    start: date | str,
    end: date | str,
    *,
    rerun: bool = False,
    fail_fast: bool = False,
    on_date: DateFn | None = None,
    on_progress: ProgressFn | None = None,
) -> list[RunResult]:
    """Score ``name`` for each as_of from ``start`` to ``end``; one result per date.

    ``on_date(as_of, None)`` is called before a date and ``on_date(as_of, result)``
    after it (for a progress bar). Bad input (job, range, model) raises before
    anything is written; per-date failures are results, not exceptions.
    """
    days = date_range(start, end)
    job = cfg.job(name)
    # Fails early (exit 2, nothing written) on a bad model or source; its
    # version decides which dates count as done.
    resolved = resolve_job(cfg, engine, name, days[0])
    version = resolved.model.version
    try:
        create_tool_tables(engine)
        done = set() if rerun else ledger.succeeded_as_ofs(engine, job.name, version)
    except sa.exc.SQLAlchemyError as exc:
        raise BatchScorerError(f"job {name!r}: cannot read the ledger: {mask_text(first_line(exc))}") from exc
    todo = [d for d in days if d not in done]
    log.info("backfill %s %s..%s: %d date(s), %d already succeeded with model %s%s",
             name, days[0], days[-1], len(days), len(days) - len(todo), version,
             " (ignored: --rerun)" if rerun else "")
    results: list[RunResult] = []
    for as_of in days:
        if on_date is not None:
            on_date(as_of, None)
        if as_of in done:
            result = RunResult(name, "already_done", as_of, model_version=version,
                               error=f"already succeeded with model {version}")
        else:
            result = _one_date(cfg, engine, name, as_of, rerun, on_progress)
        results.append(result)
        if on_date is not None:
            on_date(as_of, result)
        _log_date(result)
        if fail_fast and result.exit_code != 0:
            log.error("backfill %s: stopping at the first failure (--fail-fast)", name)
            break
    return results


def _one_date(
    cfg: Config, engine: Engine, name: str, as_of: date, rerun: bool, on_progress: ProgressFn | None
) -> RunResult:
    def already(model_version: str) -> str | None:
        # Under the job's lock: another backfill may have scored it meanwhile.
        if as_of in ledger.succeeded_as_ofs(engine, name, model_version):
            return f"already succeeded with model {model_version}"
        return None

    started = time.monotonic()
    try:
        return run_job(cfg, engine, name, as_of, TRIGGER, on_progress, skip_if=None if rerun else already)
    except LockHeld as exc:
        return RunResult(name, "skipped", as_of, error=str(exc), exit_code=exc.exit_code,
                         seconds=time.monotonic() - started)
    except BatchScorerError as exc:
        status = "invalid" if exc.exit_code == EXIT_BAD_INPUT else "failed"
        return RunResult(name, status, as_of, run_id=exc.run_id, error=str(exc), exit_code=exc.exit_code,
                         seconds=time.monotonic() - started)
    except sa.exc.SQLAlchemyError as exc:
        return RunResult(name, "failed", as_of, error=f"database error: {mask_text(first_line(exc))}",
                         exit_code=EXIT_RUN_FAILED, seconds=time.monotonic() - started)


def _log_date(result: RunResult) -> None:
    if result.status == "succeeded":
        log.info("backfill %s as_of %s: succeeded, run %s, %d rows, %.1fs",
                 result.job, result.as_of, result.run_id, result.rows_scored, result.seconds)
    elif result.status == "already_done":
        log.info("backfill %s as_of %s: skipped, %s", result.job, result.as_of, result.error)
    else:
        log.error("backfill %s as_of %s: %s: %s", result.job, result.as_of, result.status, result.error)
