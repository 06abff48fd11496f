"""A daemon fire that finds its job's lock held (a backfill, a manual run) is not
dropped: it waits and scores its as_of once the lock is free, unless the holder
scores that same as_of; other jobs' fires run meanwhile."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from batch_scorer.config import load_config
from batch_scorer.errors import LockHeld
from batch_scorer.scheduling.daemon import Daemon
from batch_scorer.scheduling.fires import Fire, FireQueue, lock_decision, retry_delay
from batch_scorer.storage.db import create_engine
from tests.helpers import job, query, write_config
from tests.schedule_support import (
    count_lines,
    daemon,
    hold_job_lock,
    release_job_lock,
    scheduled_job,
    stop,
    wait_count,
)

FIRE_OK = ": succeeded, run "
WAITING = "waiting for the job's lock"
OTHER_DAY = date(2020, 1, 1)


def test_fire_waits_for_a_lock_held_by_another_as_of_then_scores_its_own(tmp_path: Path, sqlite_url: str) -> None:
    # The fire: the catch-up of a daily 03:00 UTC job on start. A backfill of another
    # as_of holds the job's lock (this test's live process owns the lock row).
    cfg = scheduled_job(tmp_path, sqlite_url, "0 3 * * *", scheduler={"catch_up_hours": 48})
    now = datetime.now(UTC)
    fire = now.replace(hour=3, minute=0, second=0, microsecond=0)
    fire -= timedelta(days=1) if fire > now else timedelta(0)
    holder = hold_job_lock(sqlite_url, "j", OTHER_DAY)

    run = daemon(cfg)
    waited = run.wait_for(lambda ln: WAITING in ln, timeout=30)
    assert f"run {holder} (as_of {OTHER_DAY}" in waited  # says for whom it waits
    assert query(sqlite_url, "SELECT count(*) FROM scoring_runs WHERE status = 'succeeded'") == [(0,)]
    release_job_lock(sqlite_url, "j")
    wait_count(run, FIRE_OK, 1, timeout=30)
    assert stop(run) == 0, run.stderr

    assert query(sqlite_url, "SELECT trigger, as_of FROM scoring_runs WHERE status = 'succeeded'") == [
        ("schedule", str(fire.date())),
    ]
    assert count_lines(run, WAITING) == 1  # logged once, however many retries
    assert "Traceback" not in run.stderr
    # Each line about the fire names the job and its as_of once (and its run once it has one).
    label = f"job j fire {fire.isoformat()} (catch-up) as_of {fire.date()}"
    lines = [ln for ln in run.lines if label in ln]
    assert len(lines) == 2, run.stderr  # waiting, succeeded
    assert all(ln.count("job j") == 1 and ln.count(f"as_of {fire.date()}") == 1 for ln in lines), lines
    assert lines[-1].count(" run ") == 1


def test_lock_decision_no_op_only_for_a_holder_of_the_same_as_of() -> None:
    fired = datetime(2026, 3, 30, 2, 0, tzinfo=UTC)
    fire = Fire("j", fired, date(2026, 3, 30))
    soon, late = fired + timedelta(minutes=5), fired + timedelta(hours=25)
    assert lock_decision(fire, date(2026, 3, 30), soon, 24) == "no-op"
    assert lock_decision(fire, date(2026, 3, 30), late, 24) == "no-op"
    assert lock_decision(fire, date(2026, 3, 1), soon, 24) == "wait"
    assert lock_decision(fire, None, soon, 24) == "wait"  # holder unknown: wait and retry
    assert lock_decision(fire, date(2026, 3, 1), late, 24) == "give-up"  # past catch_up_hours
    assert lock_decision(fire, None, fired, 0) == "give-up"
    assert [retry_delay(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_fire_waiting_for_its_lock_does_not_hold_up_other_jobs() -> None:
    clock = [0.0]
    fires = FireQueue(clock=lambda: clock[0])
    t0 = datetime(2026, 3, 30, 2, 0, tzinfo=UTC)
    waiting, other = Fire("a", t0, t0.date(), retries=1), Fire("b", t0, t0.date())
    fires.put(waiting, delay=2.0, lock_wait=True)
    fires.put(other)
    assert fires.get(timeout=0) == other
    assert fires.get(timeout=0) is None  # not due yet
    clock[0] = 2.0
    assert fires.get(timeout=0) == waiting


def test_a_newer_fire_of_the_same_as_of_takes_over_the_wait_for_the_lock() -> None:
    clock = [0.0]
    fires = FireQueue(clock=lambda: clock[0])
    t0 = datetime(2026, 3, 30, 2, 0, tzinfo=UTC)
    fires.put(Fire("a", t0, t0.date(), retries=3), delay=8.0, lock_wait=True)
    newer = Fire("a", t0 + timedelta(hours=1), t0.date())
    fires.put(newer)
    clock[0] = 7.0
    assert fires.get(timeout=0) is None  # keeps the backoff: the same lock holds it up
    clock[0] = 8.0
    assert fires.get(timeout=0) == Fire("a", newer.fire_time, t0.date(), retries=3)


def _daemon(tmp_path: Path) -> Daemon:
    path = write_config(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", {"j": job(schedule="0 2 * * *")},
                        scheduler={"catch_up_hours": 24})
    return Daemon(load_config(path), create_engine(f"sqlite:///{tmp_path / 'x.db'}"))


def _held_by(as_of: date | None, run_id: int | None) -> LockHeld:
    exc = LockHeld("job 'j' is already being scored by run 7 (...); this run was skipped. Wait.")
    exc.holder_as_of, exc.holder_run_id = as_of, run_id  # type: ignore[attr-defined]
    return exc


def test_daemon_waits_for_a_holder_of_another_as_of_and_skips_for_the_same(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="batch_scorer")
    d = _daemon(tmp_path)
    fire = Fire("j", datetime.now(UTC).astimezone(d.tz), datetime.now(UTC).date())
    d._lock_held(fire, _held_by(fire.as_of, 7))
    assert d.fires.waiting() == []
    [line] = [r.getMessage() for r in caplog.records]
    assert line == f"{fire.label}: skipped, run 7 holds the job's lock and scores the same as_of"

    d._lock_held(fire, _held_by(OTHER_DAY, 8))
    assert [f.retries for f in d.fires.waiting()] == [1]
    assert f"waiting for the job's lock, held by run 8 (as_of {OTHER_DAY})" in caplog.text
    d.engine.dispose()


def test_coalescing_says_why_the_older_fire_was_still_waiting(caplog: pytest.LogCaptureFixture) -> None:
    running: list[Fire] = []
    fires = FireQueue(running=lambda: running[0] if running else None)
    t0 = datetime(2026, 3, 30, 2, 0, tzinfo=UTC)
    fires.put(Fire("a", t0, t0.date(), "catch-up"))
    fires.put(Fire("a", t0 + timedelta(seconds=1), t0.date()))  # nothing is running
    running.append(Fire("b", t0, t0.date()))
    fires.put(Fire("a", t0 + timedelta(seconds=2), t0.date()))
    fires.put(Fire("a", t0, date(2026, 3, 29)))  # another as_of: waits beside it, not coalesced
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("job a fire 2026-03-30T02:00:00+00:00 (catch-up) as_of 2026-03-30: coalesced")
    assert messages[0].endswith("it was queued, not started yet")
    assert messages[1].endswith("it was queued behind the run of job b")
    assert not any("previous run was still going" in m for m in messages)
    assert [(f.job, str(f.as_of)) for f in fires.waiting()] == [("a", "2026-03-30"), ("a", "2026-03-29")]
