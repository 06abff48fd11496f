"""The per-job lock: one run of a job at a time, across processes and hosts.

``pg_try_advisory_lock`` on PostgreSQL (held by a session of its own for the
whole run, so it dies with the process), a row in ``job_locks`` on SQLite
(taken over when its process is gone). :meth:`JobLock.verify`
runs inside the publish transaction, so a run that lost its lock never
publishes; :class:`batch_scorer.errors.LockLost` makes the run retry whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from batch_scorer.errors import LockHeld, LockLost
from batch_scorer.storage.catalog import catalog
from batch_scorer.storage.db import begin_write, is_postgres
from batch_scorer.storage.ledger import HOST, running_holder
from batch_scorer.storage.schema import job_locks, utcnow

log = logging.getLogger(__name__)


def lock_key(engine: Engine | Connection, job: str) -> int:
    """A signed 64-bit advisory-lock key for this job in this database schema."""
    bind = engine.engine if isinstance(engine, Connection) else engine

    def current_schema() -> str:
        if isinstance(engine, Connection):
            return str(engine.execute(sa.text("SELECT current_schema()")).scalar_one())
        with engine.connect() as conn:
            return str(conn.execute(sa.text("SELECT current_schema()")).scalar_one())

    schema = catalog(bind).remember("current_schema", current_schema)
    digest = hashlib.sha256(f"batch-scorer:{schema}:{job}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class JobLock:
    """A held job lock; :meth:`verify` checks it from the publish transaction."""

    def __init__(self, job: str, check: Callable[[Connection], bool]) -> None:
        self.job = job
        self._check = check

    def verify(self, conn: Connection) -> None:
        """Inside the publish transaction: raise :class:`LockLost` if the lock is gone."""
        if not self._check(conn):
            raise LockLost(
                f"job {self.job!r}: this run lost its job lock before publishing (its lock "
                "session ended or another process took the lock over); it was rolled back "
                "and nothing was published."
            )


def _held(engine: Engine, job: str, advice: str) -> LockHeld:
    holder = running_holder(engine, job)
    who = holder.text() if holder else "another process (its run is just starting)"
    return LockHeld(
        f"job {job!r} is already being scored by {who}; this run was skipped. {advice}",
        holder_run_id=holder.run_id if holder else None,
        holder_as_of=holder.as_of if holder else None,
    )


@contextlib.contextmanager
def job_lock(engine: Engine, job: str) -> Iterator[JobLock]:
    """Hold the job's lock for the block, or raise :class:`LockHeld` naming the holder."""
    with job_locks_held(engine, [job]) as held:
        got = held[job]
        if isinstance(got, LockHeld):
            raise got
        yield got


# What :func:`job_locks_held` gives each job: its held lock, or why another run has it.
LockOutcome = JobLock | LockHeld


@contextlib.contextmanager
def job_locks_held(engine: Engine, jobs: Sequence[str]) -> Iterator[dict[str, LockOutcome]]:
    """Take the locks of several jobs at once (the jobs of one read), held for the block.

    Each job gets its :class:`JobLock`, or the :class:`LockHeld` (naming the holder) of a
    lock another run has: that job is skipped, the others run. On SQLite one write
    transaction takes them all and one releases them; on PostgreSQL each job's lock is
    held by a session of its own. Either way a job's lock is its own: each run verifies
    its own at publish, and losing it fails that job alone.
    """
    jobs = list(dict.fromkeys(jobs))
    if is_postgres(engine):
        with _advisory_locks(engine, jobs) as held:
            yield held
    else:
        with _row_locks(engine, jobs) as held:
            yield held


@contextlib.contextmanager
def _advisory_locks(engine: Engine, jobs: list[str]) -> Iterator[dict[str, LockOutcome]]:
    """One advisory lock per job, each held by a session of its own for the block (it dies
    with the process; a session a DBA ends loses that job's lock alone)."""
    with contextlib.ExitStack() as stack:
        held: dict[str, LockOutcome] = {}
        for job in jobs:
            try:
                held[job] = stack.enter_context(_advisory_lock(engine, job))
            except LockHeld as exc:
                held[job] = exc
        yield held


@contextlib.contextmanager
def _advisory_lock(engine: Engine, job: str) -> Iterator[JobLock]:
    # Autocommit: a session-level lock needs no transaction, and each statement is then
    # one round trip (no BEGIN and COMMIT around it).
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        key = lock_key(conn, job)
        got, holder_pid = conn.execute(_TRY_LOCK, {"k": key}).one()
        if not got:
            raise _held(engine, job, _WAIT_ADVICE.format(job=job))

        def still_held(publish_conn: Connection) -> bool:
            held = publish_conn.execute(
                _HELD, {"pid": holder_pid, "hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF}).scalar_one()
            return bool(held)

        try:
            yield JobLock(job, still_held)
        finally:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                conn.execute(_UNLOCK, {"k": key})
    finally:
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            conn.close()


# Statements each job's lock runs, built once (SQLAlchemy's cache key made once).
_TRY_LOCK = sa.text("SELECT pg_try_advisory_lock(:k), pg_backend_pid()")
_UNLOCK = sa.text("SELECT pg_advisory_unlock(:k)")
# A bigint advisory key shows in pg_locks as classid (high 32 bits), objid (low 32 bits)
# and objsubid 1.
_HELD = sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid = :pid AND objsubid = 1 AND classid::bigint = :hi AND objid::bigint = :lo")
_ROW_HELD = sa.select(job_locks.c.pid).where(job_locks.c.job == sa.bindparam("job"),
                                             job_locks.c.host == sa.bindparam("host"),
                                             job_locks.c.pid == sa.bindparam("pid"))

_WAIT_ADVICE = (
    "A run of the same as_of needs nothing more; for another as_of, run it again once that "
    "run has finished (batch-scorer runs --job {job} shows it); the daemon waits and retries."
)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _row_locks(engine: Engine, jobs: list[str]) -> Iterator[dict[str, LockOutcome]]:
    """Rows in ``job_locks``, inserted in one write transaction, deleted in another."""
    me = os.getpid()
    with begin_write(engine) as conn:
        found = {row.job: row for row in conn.execute(sa.select(job_locks).where(job_locks.c.job.in_(jobs)))}
        others = {job: row for job, row in found.items() if not (row.host == HOST and not _pid_alive(row.pid))}
        stale = [job for job in found if job not in others]
        for job in stale:
            log.warning("job %s: taking over the lock of dead process %d", job, found[job].pid)
        if stale:
            conn.execute(sa.delete(job_locks).where(job_locks.c.job.in_(stale)))
        taken = [job for job in jobs if job not in others]
        if taken:
            now = utcnow()
            conn.execute(job_locks.insert(), [{"job": job, "host": HOST, "pid": me, "acquired_at": now}
                                              for job in taken])
    try:
        held: dict[str, LockOutcome] = {job: _row(job, me) for job in taken}
        held.update({job: _row_held(engine, job, row) for job, row in others.items()})
        yield held
    finally:
        if taken:
            with begin_write(engine) as conn:
                conn.execute(sa.delete(job_locks).where(
                    job_locks.c.job.in_(taken), job_locks.c.host == HOST, job_locks.c.pid == me))


def _row_held(engine: Engine, job: str, row: Any) -> LockHeld:
    delete = f"DELETE FROM job_locks WHERE job = '{job}'"  # noqa: S608 - advice text, not executed
    return _held(engine, job, _WAIT_ADVICE.format(job=job) + (
        f" (Lock row held by pid {row.pid} on host {row.host}; if that process is gone "
        f"from another host, delete its row: {delete}.)"))


def _row(job: str, me: int) -> JobLock:
    def still_held(publish_conn: Connection) -> bool:
        return publish_conn.execute(_ROW_HELD, {"job": job, "host": HOST, "pid": me}).first() is not None

    return JobLock(job, still_held)
