"""Fires of the daemon: what one fire is, the queue of fires waiting to run, and
what a fire does when another run holds its job's lock.

- The queue holds at most one fire per job and as_of: a newer fire of the same
  job and as_of that comes while an older one still waits (its turn, or the
  job's lock) replaces it, with one log line (``coalesced into the newer
  fire``). Fires of different as_of values wait side by side, so none is lost.
- A fire that finds its job's lock held by a run of another as_of (or of an
  as_of the lock does not tell) waits: it is queued again after
  :func:`retry_delay` (1 s, doubling, at most 30 s), without holding up other
  jobs' fires, until ``scheduler.catch_up_hours`` after its fire time. A holder
  scoring the same as_of makes the fire a no-op. See :func:`lock_decision`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Literal

log = logging.getLogger(__name__)

LockDecision = Literal["wait", "no-op", "give-up"]
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0


@dataclass(frozen=True)
class Fire:
    """One fire of one job: when it was due (in the configured timezone) and the as_of it scores.

    ``retries``: how many times it has already found the job's lock held."""

    job: str
    fire_time: datetime
    as_of: date
    kind: str = "schedule"  # schedule | catch-up | missed
    retries: int = 0

    @property
    def label(self) -> str:
        """How every log line about this fire starts: the job, fire time, kind and as_of, once each."""
        return f"job {self.job} fire {self.fire_time.isoformat()} ({self.kind}) as_of {self.as_of}"


def lock_decision(fire: Fire, holder_as_of: date | None, now: datetime, catch_up_hours: float) -> LockDecision:
    """What a fire does when another run holds its job's lock.

    ``no-op`` when the holder scores the fire's own as_of; else ``wait`` (try
    again later; an unknown holder as_of, None, waits too) until
    ``catch_up_hours`` after the fire time, then ``give-up``."""
    if holder_as_of is not None and holder_as_of == fire.as_of:
        return "no-op"
    if now.astimezone(UTC) >= lock_deadline(fire, catch_up_hours):
        return "give-up"
    return "wait"


def lock_deadline(fire: Fire, catch_up_hours: float) -> datetime:
    """Until when (UTC) a fire keeps waiting for its job's lock."""
    return fire.fire_time.astimezone(UTC) + timedelta(hours=catch_up_hours)


def retry_delay(retries: int) -> float:
    """Seconds before a fire that found the lock held ``retries`` times before tries again."""
    return min(FIRST_RETRY_SECONDS * 2 ** min(retries, 16), MAX_RETRY_SECONDS)


@dataclass
class _Entry:
    fire: Fire
    due: float  # clock() time from which it may run
    seq: int  # its place in line (first come, first run)
    lock_wait: bool  # waiting for the job's lock (else: waiting for its turn)


class FireQueue:
    """Fires waiting to run: first come, first run, at most one per job and as_of.

    ``running`` tells what the daemon is running now (for the coalescing log
    line); ``clock`` is ``time.monotonic`` (a test passes its own)."""

    def __init__(self, running: Callable[[], Fire | None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._pending: dict[tuple[str, date], _Entry] = {}
        self._cond = threading.Condition()
        self._running = running
        self._clock = clock
        self._seq = 0

    def put(self, fire: Fire, delay: float = 0.0, lock_wait: bool = False) -> None:
        """Queue ``fire`` to run after ``delay`` seconds (a fire waiting for its job's lock)."""
        key = (fire.job, fire.as_of)
        with self._cond:
            old = self._pending.get(key)
            if old is not None and old.fire.fire_time.astimezone(UTC) == fire.fire_time.astimezone(UTC):
                return  # announced twice (a missed fire APScheduler reports, say): one is enough
            if old is not None:
                older, newer = sorted((old.fire, fire), key=lambda f: f.fire_time.astimezone(UTC))
                if newer is fire and old.lock_wait and not lock_wait:
                    # The same lock holds it up: it takes over the wait (its retries and next try).
                    self._pending[key] = _Entry(replace(fire, retries=old.fire.retries), old.due, old.seq, True)
                elif newer is fire:
                    # The newer fire takes the older one's place in line.
                    self._pending[key] = _Entry(fire, self._clock() + delay, old.seq, lock_wait)
                why = self._why_waiting(old.lock_wait if newer is fire else lock_wait)
                log.warning("%s: coalesced into the newer fire %s (%s) of the same as_of: it was %s",
                            older.label, newer.fire_time.isoformat(), newer.kind, why)
            else:
                self._seq += 1
                self._pending[key] = _Entry(fire, self._clock() + delay, self._seq, lock_wait)
            self._cond.notify_all()

    def _why_waiting(self, lock_wait: bool) -> str:
        if lock_wait:
            return "waiting for the job's lock"
        running = self._running()
        if running is not None:
            return f"queued behind the run of job {running.job}"
        return "queued, not started yet"

    def get(self, timeout: float) -> Fire | None:
        """The next fire that is due (oldest in line first), waiting up to ``timeout`` seconds."""
        deadline = self._clock() + timeout
        with self._cond:
            while True:
                now = self._clock()
                due = [e for e in self._pending.values() if e.due <= now]
                if due:
                    entry = min(due, key=lambda e: e.seq)
                    del self._pending[(entry.fire.job, entry.fire.as_of)]
                    return entry.fire
                left = deadline - now
                if left <= 0:
                    return None
                soonest = min((e.due for e in self._pending.values()), default=now + left)
                self._cond.wait(min(left, max(soonest - now, 0.001)))

    def drop_job(self, job: str) -> list[Fire]:
        """Remove and return the waiting fires of ``job`` (it left the configuration)."""
        with self._cond:
            keys = [k for k in self._pending if k[0] == job]
            return [self._pending.pop(k).fire for k in keys]

    def waiting(self) -> list[Fire]:
        """The fires still waiting, in line order."""
        with self._cond:
            return [e.fire for e in sorted(self._pending.values(), key=lambda e: e.seq)]
