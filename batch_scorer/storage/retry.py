"""Which database errors are worth retrying, and the bounded retry loop.

Transient errors are the ones where running the same work again can succeed
without anyone changing anything: the connection was lost (the server
restarted, a DBA ran ``pg_terminate_backend``, the network dropped), a
serialization failure, a deadlock. Everything else (a constraint, a full
disk, a permission, a bad column, a locked SQLite file that already waited its
busy timeout, a bug) fails at once: retrying it only delays the error.

Errors are classified by SQLSTATE where the driver gives one (``sqlstate`` in
psycopg 3, ``pgcode`` in psycopg2) and by the driver's exception class when
the connection died without one (psycopg2 reports "server closed the
connection unexpectedly" with no code; the ADBC reader an ``OSError``). The classifier walks ``__cause__`` /
``__context__`` so it also sees through our own wrappers
(``DatabaseError(...) from exc``, ``RunFailed(...) from exc``).

The unit that is retried is a whole run (``runtime.batch``): after the
failed attempt rolled back and recorded its ledger row as ``failed``, the
next attempt takes the job lock again and starts a **new** ledger row, so the
ledger keeps one honest row per attempt (issue 3, "Faults").
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy as sa

log = logging.getLogger(__name__)

T = TypeVar("T")

# SQLSTATEs where the same work may succeed when run again.
TRANSIENT_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "57P01",  # admin_shutdown (pg_terminate_backend, fast shutdown)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (server starting up)
    }
)
# Class 08: connection exceptions.
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08"})

INSUFFICIENT_PRIVILEGE = "42501"

# psycopg2 (and ADBC's stream reader) report a dead connection without a
# SQLSTATE; these are their words.
_LOST_CONNECTION_WORDS = (
    "server closed the connection unexpectedly",
    "connection already closed",
    "terminating connection",
    "could not receive data from server",
    "could not send data to server",
    "ssl connection has been closed unexpectedly",
    "the connection is lost",
    "consuming input failed",
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes/contexts, and each one's DB-API ``orig``."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop(0)
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        orig = getattr(cur, "orig", None)
        if isinstance(orig, BaseException):
            todo.append(orig)
        todo.extend([cur.__cause__, cur.__context__])


def sqlstate(exc: BaseException) -> str | None:
    """The first SQLSTATE found in the exception chain (psycopg 3 or psycopg2), if any."""
    for cur in _chain(exc):
        code = getattr(cur, "sqlstate", None) or getattr(cur, "pgcode", None)
        if isinstance(code, str) and code:
            return code
    return None


def _is_driver_connection_loss(exc: BaseException) -> bool:
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    module = type(exc).__module__.split(".")[0]
    name = type(exc).__name__
    text = str(exc).lower()
    lost = any(words in text for words in _LOST_CONNECTION_WORDS)
    if module in ("psycopg", "psycopg2") and name in ("OperationalError", "InterfaceError"):
        return lost
    # The PostgreSQL fast reader (ADBC, libpq underneath) surfaces a dead
    # connection mid-stream as an OSError "[libpq] ... FATAL: terminating ...".
    if module == "adbc_driver_manager" or (isinstance(exc, OSError) and "[libpq]" in text):
        return lost
    return False


def is_transient(exc: BaseException) -> bool:
    """True if running the same work again may succeed: connection lost, serialization
    failure, deadlock. False for everything else, including anything from SQLite."""
    if any(getattr(cur, "transient", False) for cur in _chain(exc)):
        return True  # e.g. LockLost: the run's lock session ended
    code = sqlstate(exc)
    if code is not None:
        return code in TRANSIENT_SQLSTATES or code[:2] in TRANSIENT_SQLSTATE_CLASSES
    return any(_is_driver_connection_loss(cur) for cur in _chain(exc))


def is_insufficient_privilege(exc: BaseException) -> bool:
    """True for PostgreSQL's "permission denied" (SQLSTATE 42501)."""
    return sqlstate(exc) == INSUFFICIENT_PRIVILEGE


LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout ran out (or NOWAIT)


def is_lock_wait_timeout(exc: BaseException) -> bool:
    """True if a write gave up waiting for another session's lock: SQLite's busy timeout
    on the file, or PostgreSQL's ``lock_timeout`` (``database.busy_timeout_seconds``)."""
    return is_sqlite_locked(exc) or sqlstate(exc) == LOCK_NOT_AVAILABLE


def is_sqlite_locked(exc: BaseException) -> bool:
    """True if SQLite gave up waiting for another writer (after its busy timeout)."""
    for cur in _chain(exc):
        if type(cur).__module__ == "sqlite3" and "database is locked" in str(cur):
            return True
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` extra attempts after the first, waiting ``backoff_seconds``,
    then twice that, and so on (at most ``max_delay_seconds``), plus up to 25%
    random jitter so many jobs hit by the same outage do not retry in lockstep."""

    retries: int = 2
    backoff_seconds: float = 2.0
    max_delay_seconds: float = 60.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.backoff_seconds * 2 ** (attempt - 1), self.max_delay_seconds)
        return base + random.uniform(0, base / 4)  # noqa: S311 - jitter, not crypto


def with_retries(
    work: Callable[[int], T],
    policy: RetryPolicy,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``work(attempt)`` until it returns; retry only transient errors.

    ``work`` must leave nothing behind when it raises (roll back, record its
    failure). Each failed attempt is logged with its SQLSTATE and the wait.
    """
    attempts = policy.retries + 1
    attempt = 1
    while True:
        try:
            return work(attempt)
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt >= attempts:
                if attempts > 1:
                    log.error(
                        "%s: attempt %d of %d failed with a transient database error (%s, "
                        "SQLSTATE %s); giving up",
                        what, attempt, attempts, type(exc).__name__, sqlstate(exc) or "none",
                    )
                raise
            wait = policy.delay(attempt)
            log.warning(
                "%s: attempt %d of %d failed with a transient database error (%s, SQLSTATE %s); "
                "retrying the whole run in %.1fs",
                what, attempt, attempts, type(exc).__name__, sqlstate(exc) or "none", wait,
            )
            sleep(wait)
            attempt += 1
