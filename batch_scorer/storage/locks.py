"""The per-job lock: one run of a job at a time, across processes and hosts.

``pg_try_advisory_lock`` on PostgreSQL (held by a dedicated session for the
whole run, so it dies with the process), a row in ``job_locks`` on SQLite
(taken over when its process is gone). :meth:`JobLock.verify` runs inside the
publish transaction, so a run that lost its lock never publishes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from batch_scorer.errors import LockHeld, RunFailed
from batch_scorer.storage.db import begin_write, is_postgres
from batch_scorer.storage.ledger import HOST, holder_text
from batch_scorer.storage.schema import job_locks, utcnow

log = logging.getLogger(__name__)


def lock_key(engine: Engine, job: str) -> int:
    """A signed 64-bit advisory-lock key for this job in this database schema."""
    with engine.connect() as conn:
        schema = conn.execute(sa.text("SELECT current_schema()")).scalar_one()
    digest = hashlib.sha256(f"batch-scorer:{schema}:{job}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class JobLock:
    """A held job lock. :meth:`verify` runs inside the publish transaction, so a
    run whose lock was lost (its lock session killed, its lock row taken over)
    never publishes."""

    def __init__(self, job: str, check: Callable[[Connection], bool]) -> None:
        self.job = job
        self._check = check

    def verify(self, conn: Connection) -> None:
        if not self._check(conn):
            raise RunFailed(
                f"job {self.job!r}: this run lost its job lock before publishing (its lock "
                "session ended or another process took the lock over); it was rolled back "
                "and nothing was published. Run it again."
            )


@contextlib.contextmanager
def job_lock(engine: Engine, job: str) -> Iterator[JobLock]:
    """Hold the job's lock for the block, or raise :class:`LockHeld` naming the holder."""
    if is_postgres(engine):
        with _advisory_lock(engine, job) as lock:
            yield lock
    else:
        with _row_lock(engine, job) as lock:
            yield lock


@contextlib.contextmanager
def _advisory_lock(engine: Engine, job: str) -> Iterator[JobLock]:
    key = lock_key(engine, job)
    conn = engine.connect()
    try:
        got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar_one()
        holder_pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        conn.commit()
        if not got:
            raise LockHeld(
                f"job {job!r} is already being scored by {holder_text(engine, job)}; "
                "this run was skipped. Wait for it to finish (batch-scorer runs --job "
                f"{job})."
            )

        def still_held(publish_conn: Connection) -> bool:
            # A bigint advisory key shows in pg_locks as classid (high 32 bits),
            # objid (low 32 bits) and objsubid 1.
            held = publish_conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND pid = :pid AND objsubid = 1 AND classid::bigint = :hi AND objid::bigint = :lo"
                ),
                {"pid": holder_pid, "hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF},
            ).scalar_one()
            return bool(held)

        try:
            yield JobLock(job, still_held)
        finally:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    finally:
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            conn.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _row_lock(engine: Engine, job: str) -> Iterator[None]:
    me = os.getpid()
    with begin_write(engine) as conn:
        row = conn.execute(sa.select(job_locks).where(job_locks.c.job == job)).first()
        if row is not None:
            stale = row.host == HOST and not _pid_alive(row.pid)
            if not stale:
                advice = f"DELETE FROM job_locks WHERE job = '{job}'"  # noqa: S608 - advice text, not executed
                raise LockHeld(
                    f"job {job!r} is already being scored by {holder_text(engine, job)} "
                    f"(lock row held by pid {row.pid} on host {row.host}); this run was "
                    f"skipped. If that process is gone from another host, delete its row: {advice}."
                )
            log.warning("job %s: taking over the lock of dead process %d", job, row.pid)
            conn.execute(sa.delete(job_locks).where(job_locks.c.job == job))
        conn.execute(job_locks.insert().values(job=job, host=HOST, pid=me, acquired_at=utcnow()))

    def still_held(publish_conn: Connection) -> bool:
        row = publish_conn.execute(
            sa.select(job_locks.c.pid).where(
                job_locks.c.job == job, job_locks.c.host == HOST, job_locks.c.pid == me
            )
        ).first()
        return row is not None

    try:
        yield JobLock(job, still_held)
    finally:
        with begin_write(engine) as conn:
            conn.execute(
                sa.delete(job_locks).where(
                    job_locks.c.job == job, job_locks.c.host == HOST, job_locks.c.pid == me
                )
            )
