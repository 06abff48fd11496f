"""What a run did: :class:`RunResult`, and the one mapping from an exception to it.

``run``, ``backfill`` and the scheduler all turn failures into results here, so
the status, the exit code and the wording are the same wherever a run fails.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

import sqlalchemy as sa

from batch_scorer.errors import (
    EXIT_BAD_INPUT,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_RUN_FAILED,
    BatchScorerError,
    LockHeld,
    RunFailed,
)
from batch_scorer.masking import first_line, mask_text
from batch_scorer.runtime.signals import Interrupted
from batch_scorer.storage.retry import is_lock_wait_timeout, is_sqlite_locked


class Status(enum.StrEnum):
    """The status of a run's result (the ledger's statuses are in storage.schema.RunStatus)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # started and failed, or its upstream job failed (exit 1)
    INVALID = "invalid"  # bad model, source, output or arguments: nothing was scored (exit 2)
    SKIPPED = "skipped"  # another run held the lock (exit 3), or an upstream job failed (exit 1)
    ALREADY_DONE = "already_done"  # a backfill date or a fire that was already scored (exit 0)


@dataclass(frozen=True)
class RunResult:
    """What one run of one job for one as_of did. ``error`` is None unless it did not succeed."""

    job: str
    status: Status
    as_of: date | None = None
    run_id: int | None = None
    model_version: str | None = None
    model_name: str | None = None
    model_registry_version: int | None = None
    rows_read: int = 0
    rows_scored: int = 0
    rows_rejected: int = 0
    seconds: float = 0.0
    output_table: str | None = None
    error: str | None = None
    exit_code: int = EXIT_OK
    drift_status: str | None = None
    notes: tuple[str, ...] = field(default=())
    # The exception behind a result that is not a success (e.g. LockHeld names the
    # holder's as_of, which the daemon uses to decide whether to wait).
    cause: BaseException | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK

    @property
    def rows_published(self) -> int:
        return self.rows_scored if self.status == Status.SUCCEEDED else 0


class RunResults(list[RunResult]):
    """The results of one invocation, in the order the jobs were asked for."""

    @property
    def exit_code(self) -> int:
        return exit_code(self)

    def failures(self) -> list[RunResult]:
        return [r for r in self if not r.ok]

    def raise_for_failures(self) -> RunResults:
        """Raise :class:`RunFailed` (with the exit code the CLI would use, and every result
        as its ``results``) if any run did not succeed; return self otherwise. For notebooks
        and scripts: ``run(...).raise_for_failures()``."""
        bad = self.failures()
        if bad:
            exc = RunFailed("; ".join(f"{r.job} (as_of {r.as_of}): {r.status}: {r.error}" for r in bad))
            exc.exit_code = self.exit_code
            exc.run_id = bad[0].run_id
            exc.results = self  # the jobs that succeeded are not lost to the caller
            raise exc
        return self


def exit_code(results: Iterable[RunResult]) -> int:
    """One exit code for many runs: 2 bad input, else 1 failed, else 3 skipped, else 0."""
    codes = {r.exit_code for r in results}
    for code in (EXIT_BAD_INPUT, EXIT_RUN_FAILED, EXIT_LOCKED):
        if code in codes:
            return code
    return EXIT_OK


def error_text(exc: BaseException) -> str:
    """An exception as one masked line (the ledger's ``error``, a result's ``error``)."""
    if isinstance(exc, Interrupted):
        return f"interrupted by {exc.signame}; rolled back, nothing published"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (SIGINT); rolled back, nothing published"
    if is_sqlite_locked(exc):
        return "database is locked by another writer (gave up after database.busy_timeout_seconds)"
    if is_lock_wait_timeout(exc):
        return ("another session's lock blocked this run's write (gave up after "
                "database.busy_timeout_seconds); nothing published")
    if isinstance(exc, sa.exc.SQLAlchemyError):
        return mask_text(f"database error: {type(exc).__name__}: {first_line(exc)}")
    if isinstance(exc, BatchScorerError):
        return mask_text(str(exc))
    return mask_text(f"unexpected {type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def status_of(exc: BaseException) -> tuple[Status, int]:
    """The result status and exit code an exception means."""
    if isinstance(exc, LockHeld):
        return Status.SKIPPED, EXIT_LOCKED
    if isinstance(exc, BatchScorerError) and exc.exit_code == EXIT_BAD_INPUT:
        return Status.INVALID, EXIT_BAD_INPUT
    return Status.FAILED, EXIT_RUN_FAILED


def from_exception(job: str, as_of: date | None, exc: BaseException, **known: Any) -> RunResult:
    """The result of a run that raised ``exc``; ``known`` keeps what the run had counted
    (run_id, rows_read, model_version...), so a failed result never drops its numbers."""
    status, code = status_of(exc)
    run_id = known.pop("run_id", None) or getattr(exc, "run_id", None)
    return RunResult(job, status, as_of, run_id=run_id, error=error_text(exc), exit_code=code, cause=exc, **known)


def with_counts(result: RunResult, counts: Mapping[str, int]) -> RunResult:
    return replace(result, **counts)
