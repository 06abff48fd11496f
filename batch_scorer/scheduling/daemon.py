"""The ``batch-scorer schedule`` daemon (APScheduler 3) and ``--next``.

How it works (docs/operations.md, "The scheduler daemon"):

- Each job with a ``schedule:`` gets an APScheduler job on a
  :class:`~batch_scorer.config.cron.ScheduleTrigger` in the configured
  timezone (fire times and DST rules: that module). The APScheduler job only
  *announces* the fire (job, fire time); the runs happen in the daemon's main
  thread: the fires due together run as one batch (:func:`run_fires`: per
  as_of, ``after:`` order, shared reads, up to ``defaults.parallel_jobs`` jobs at
  a time), batches never overlap, SIGTERM can roll a run back, and a fire that
  comes while the daemon is busy waits in a queue
  (:class:`~batch_scorer.scheduling.fires.FireQueue`: one waiting fire per job
  and as_of; a newer one of the same as_of coalesces, with a log line).
- as_of of a fire: the fire time's date in the timezone (``as_of: fire_date``,
  the default) or the day before (``as_of: previous_day``).
- A fire is *done* when the ledger has a succeeded run of the job for its
  as_of that started at or after the fire time. Checked while holding the
  job's lock right before the run starts, so two daemons (or a daemon and a
  cron line) on one database score a fire once.
- Lock held by another run (a backfill, a manual run, another daemon): if it
  scores the fire's as_of, the fire is a no-op; otherwise the fire waits and
  retries (1 s, doubling, at most 30 s) until ``scheduler.catch_up_hours``
  after its fire time, without holding up other jobs' fires
  (:func:`~batch_scorer.scheduling.fires.lock_decision`).
- Catch-up: on start, the latest fire of each job within
  ``scheduler.catch_up_hours`` runs once if it is not done. APScheduler's
  misfire grace is not relied on (it is set generously anyway, and a missed
  fire it reports is queued like any other).
- SIGHUP: re-read and validate the same config file, after the run in
  progress; on success the new jobs and schedules replace the old ones (one
  log line says what changed), on error the old configuration stays (one log
  line with the error). ``database.url`` and ``busy_timeout_seconds`` need a
  restart (:mod:`~batch_scorer.scheduling.reload`).
- SIGTERM/SIGINT: no new fires; a run in progress may finish for
  ``scheduler.stop_timeout_seconds``, then it is interrupted and rolled back
  (a second signal interrupts it at once); the daemon exits 0.

Every log line about a fire starts with :attr:`Fire.label` (job, fire time,
kind, as_of) and names the run id once there is one.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from apscheduler.events import EVENT_JOB_MISSED, EVENT_JOB_SUBMITTED, JobEvent
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.engine import Engine

from batch_scorer.config import Config, JobConfig
from batch_scorer.config.cron import ScheduleTrigger, cron_trigger, latest_fire, next_fires
from batch_scorer.dates import as_of_for
from batch_scorer.errors import BatchScorerError, DatabaseError, LockHeld, UsageError
from batch_scorer.masking import first_line, mask_text
from batch_scorer.runtime.jobs import Invocation, run_jobs
from batch_scorer.runtime.outcome import RunResult, RunResults, Status, from_exception
from batch_scorer.runtime.progress import row_progress
from batch_scorer.runtime.signals import Interrupted
from batch_scorer.runtime.spec import RunPlan
from batch_scorer.scheduling.fires import Fire, FireQueue, lock_deadline, lock_decision, retry_delay
from batch_scorer.scheduling.reload import config_changes, keep_restart_settings
from batch_scorer.storage import ledger
from batch_scorer.storage.ddl import create_tool_tables

log = logging.getLogger(__name__)

TRIGGER = "schedule"
ReloadFn = Callable[[], Config]
__all__ = ["TRIGGER", "Daemon", "Fire", "catch_up", "done_by", "fire_as_of", "run_fires", "triggers", "upcoming"]


def fire_as_of(job: JobConfig, fire_time: datetime, tz: ZoneInfo) -> date:
    """The as_of a fire implies: its date in ``tz``, or the day before for ``previous_day``
    (the same rule a run without a date applies to now)."""
    return as_of_for(job.as_of, fire_time, str(tz))


def _fire(cfg: Config, name: str, fire_time: datetime, kind: str) -> Fire:
    tz = ZoneInfo(cfg.timezone)
    local = fire_time.astimezone(tz)  # shown in the configured timezone
    return Fire(name, local, fire_as_of(cfg.job(name), local, tz), kind)


def triggers(cfg: Config, names: Sequence[str] = ()) -> dict[str, ScheduleTrigger]:
    """The trigger of each scheduled job (all of them, or those ``names`` select: a matrix
    job's name selects its expansions, as ``run`` takes it)."""
    names = cfg.select(names) if names else ()
    for name in names:
        if cfg.job(name).schedule is None:
            raise UsageError(f"job {name!r} has no schedule: key; add one (e.g. schedule: \"0 2 * * *\")")
    chosen = [cfg.job(n) for n in names] if names else list(cfg.jobs.values())
    tz = ZoneInfo(cfg.timezone)
    # scheduler.allow_seconds_field (test-only 6-field crons) where the config has it.
    seconds = cfg.scheduler.allow_seconds_field
    out = {j.name: cron_trigger(j.schedule, tz, allow_seconds=seconds) for j in chosen if j.schedule is not None}
    if not out:
        raise UsageError(
            f"no job in {cfg.source_file or 'the config'} has a schedule: key, so the daemon "
            "has nothing to do. Add e.g. schedule: \"0 2 * * *\" to a job."
        )
    return out


def upcoming(
    cfg: Config, count: int, after: datetime | None = None, names: Sequence[str] = ()
) -> list[Fire]:
    """The next ``count`` fires of each scheduled job after ``after`` (default: now)."""
    start = after or datetime.now(UTC)
    if start.tzinfo is None:
        start = start.replace(tzinfo=ZoneInfo(cfg.timezone))
    fires = []
    for name, trigger in triggers(cfg, names).items():
        fires.extend(_fire(cfg, name, f, "schedule") for f in next_fires(trigger, start, count))
    return fires


def done_by(engine: Engine, job: str, as_of: date, fire_time: datetime) -> int | None:
    """The run_id of a succeeded run that scored this fire (started at or after it), if any."""
    return ledger.scored_since(engine, job, as_of, fire_time.astimezone(UTC))


def catch_up(cfg: Config, engine: Engine, names: Sequence[str] = (), now: datetime | None = None) -> list[Fire]:
    """The fires to run on start: each job's latest fire in the catch-up window, if not done."""
    now = now or datetime.now(UTC)
    window = timedelta(hours=cfg.scheduler.catch_up_hours)
    out = []
    for name, trigger in triggers(cfg, names).items():
        fire_time = latest_fire(trigger, now, window)
        if fire_time is None:
            log.info("job %s: no fire in the last %gh to catch up", name, cfg.scheduler.catch_up_hours)
            continue
        fire = _fire(cfg, name, fire_time, "catch-up")
        run_id = done_by(engine, name, fire.as_of, fire_time)
        if run_id is not None:
            log.info("job %s: last fire %s (as_of %s) was scored by run %d; nothing to catch up",
                     name, fire.fire_time.isoformat(), fire.as_of, run_id)
        else:
            log.warning("job %s: last fire %s (as_of %s) has no succeeded run; running it now (catch-up)",
                        name, fire.fire_time.isoformat(), fire.as_of)
            out.append(fire)
    return out


def _without_job(message: str, job: str) -> str:
    """An error message without its leading ``job 'x': `` (the fire's label names the job)."""
    prefix = f"job {job!r}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def run_fires(cfg: Config, engine: Engine, fires: Sequence[Fire]) -> list[RunResult]:
    """Run fires that are due together as one batch per as_of (one engine, each model loaded
    once, ``after:`` order, shared reads, up to ``defaults.parallel_jobs`` at a time) and log
    one line per fire. A fire's done-check is repeated under its job's lock.

    Errors are results, never raised (the daemon keeps going), except an interrupt; a
    result whose job's lock was held carries the :class:`LockHeld` as its ``cause``."""
    by_job = {f.job: f for f in fires}
    results: list[RunResult] = []

    def already(plan: RunPlan) -> str | None:
        fire = by_job[plan.job]
        run_id = done_by(engine, fire.job, fire.as_of, fire.fire_time)
        return f"already scored by run {run_id}" if run_id is not None else None

    for as_of in dict.fromkeys(f.as_of for f in fires):
        names = [f.job for f in fires if f.as_of == as_of]
        with row_progress(cfg.runtime.progress_seconds, interactive=False) as progress:
            inv = Invocation(cfg, engine, TRIGGER, cfg.defaults.parallel_jobs, skip_if=already,
                             on_progress=progress)
            try:
                batch = run_jobs(inv, names, as_of)
            except (BatchScorerError, sa.exc.SQLAlchemyError) as exc:  # e.g. the server is down
                batch = RunResults(from_exception(n, as_of, exc) for n in names)
        for result in batch:
            _log_fire(by_job[result.job], result)
        results += batch
    return results


def _log_fire(fire: Fire, result: RunResult) -> None:
    what = fire.label
    if isinstance(result.cause, LockHeld):
        return  # the daemon decides: wait, no-op or give up (logged there)
    if result.status == Status.ALREADY_DONE:
        log.info("%s: skipped, %s", what, result.error)
    elif result.status == Status.SUCCEEDED:
        log.info("%s: succeeded, run %s, %d rows scored, %d rejected, %.1fs",
                 what, result.run_id, result.rows_scored, result.rows_rejected, result.seconds)
    else:
        run = f", run {result.run_id}" if result.run_id is not None else ""
        log.error("%s: %s%s: %s", what, result.status, run, _without_job(result.error or "", fire.job))


def lock_holder(exc: LockHeld) -> str:
    """Who holds the lock, from the error: its run and as_of when known, else its message's words."""
    run_id, as_of = getattr(exc, "holder_run_id", None), getattr(exc, "holder_as_of", None)
    if run_id is not None or as_of is not None:
        return " ".join(filter(None, (f"run {run_id}" if run_id is not None else "a run",
                                      f"(as_of {as_of})" if as_of is not None else "")))
    found = re.search(r"already being scored by (.+?); this run was skipped", str(exc))
    return found.group(1) if found else f"another run ({exc})"


def _one_line(exc: BaseException) -> str:
    return " ".join(mask_text(str(exc)).split())


class Daemon:
    """Runs scheduled fires until :meth:`stop` or SIGTERM/SIGINT. Use :func:`serve`.

    ``reload`` returns the configuration anew (SIGHUP); None: nothing to reload."""

    def __init__(self, cfg: Config, engine: Engine, names: Sequence[str] = (),
                 reload: ReloadFn | None = None) -> None:
        self.cfg = cfg
        self.engine = engine
        self.names = tuple(names)
        self.tz = ZoneInfo(cfg.timezone)
        self.triggers = triggers(cfg, self.names)
        self._reload_fn = reload
        self._reload_asked = False
        self._stop = threading.Event()
        self._stop_signal: int | None = None
        self._running: Fire | None = None
        self._interrupting = False
        self.fires = FireQueue(running=lambda: self._running)
        # UTC: APScheduler subtracts and compares its `now` with fire times, which
        # is exact across DST only between instants of different zones or UTC.
        self.scheduler = BackgroundScheduler(
            timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1},
        )

    def _announce(self, event: JobEvent) -> None:
        # Runs on APScheduler's thread: only queue the fire.
        if event.code == EVENT_JOB_MISSED:
            times = [event.scheduled_run_time]
            kind = "missed"
        else:
            times = list(getattr(event, "scheduled_run_times", []))
            kind = "schedule"
        cfg = self.cfg  # one configuration for the whole announcement (SIGHUP swaps it)
        if not times or self._stop.is_set() or event.job_id not in cfg.jobs:
            return
        fire_time = max(times, key=lambda t: t.astimezone(UTC))
        self.fires.put(_fire(cfg, event.job_id, fire_time, kind))

    def stop(self) -> None:
        """Take no new fires; the loop ends after the current run."""
        self._stop.set()

    def serve(self) -> int:
        """Catch up, then run fires until stopped. Returns the exit code (0)."""
        # Catch-up covers fires up to `now`; the scheduler takes every fire
        # after it (one it reaches late still runs): no gap between the two.
        now = datetime.now(UTC)
        try:
            create_tool_tables(self.engine)
            missed = catch_up(self.cfg, self.engine, list(self.triggers), now)
        except sa.exc.SQLAlchemyError as exc:
            # At start only: once running, a database error fails one fire, not the daemon.
            raise DatabaseError(
                f"scheduler: cannot read the scoring_runs ledger to catch up missed fires: "
                f"{mask_text(first_line(exc))}"
            ) from exc
        restore = self._install_signals()
        try:
            for fire in missed:
                self.fires.put(fire)
            self.start_scheduler(now)
            log.info("scheduler started: %d job(s); SIGTERM or Ctrl-C stops it, SIGHUP reloads "
                     "the configuration", len(self.triggers))
            self._loop()
        except Interrupted as exc:
            log.warning("stopped by %s: the run in progress was rolled back", exc.signame)
        finally:
            self._stop.set()
            if self.scheduler.running:
                self.scheduler.shutdown(wait=False)
            restore()
        for fire in self.fires.waiting():
            log.warning("%s: not run: the daemon stopped before it could run", fire.label)
        log.info("scheduler stopped")
        return 0

    def start_scheduler(self, now: datetime) -> None:
        """Start APScheduler with one job per trigger, its first fire after ``now``."""
        for name, trigger in self.triggers.items():
            self._add_job(name, trigger, now)
        self.scheduler.add_listener(self._announce, EVENT_JOB_SUBMITTED | EVENT_JOB_MISSED)
        self.scheduler.start()
        for job in self.scheduler.get_jobs():
            self._log_next(job.id)

    def _add_job(self, name: str, trigger: ScheduleTrigger, now: datetime) -> None:
        first = next_fires(trigger, now, 1)
        # (next_run_time=None would mean "paused" to APScheduler.)
        when = {"next_run_time": first[0]} if first else {}
        grace = int(max(self.cfg.scheduler.catch_up_hours * 3600, 3600))
        self.scheduler.add_job(_announced, trigger, id=name, name=name, misfire_grace_time=grace, **when)

    def _log_next(self, name: str) -> None:
        job = self.scheduler.get_job(name)
        when = job.next_run_time.astimezone(self.tz).isoformat() if job and job.next_run_time else "none"
        log.info("job %s: schedule %r (%s), next fire %s", name, self.cfg.job(name).schedule,
                 self.cfg.timezone, when)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._reload_asked:
                self._reload()
            fire = self.fires.get(timeout=0.2)
            if fire is None or self._stop.is_set():
                if fire is not None:
                    self.fires.put(fire)  # listed as not run at the end
                continue
            due = [f for f in (fire, *self._also_due()) if f.job in self.cfg.jobs]  # a reload may drop jobs
            if not due:
                continue
            self._running = due[0]
            try:
                for done in run_fires(self.cfg, self.engine, due):
                    if isinstance(done.cause, LockHeld):
                        self._lock_held(next(f for f in due if f.job == done.job), done.cause)
            finally:
                self._running = None
                if _main_thread():
                    signal.setitimer(signal.ITIMER_REAL, 0)

    def _also_due(self) -> list[Fire]:
        """The other fires due now: they run in the same batch (after: order, shared reads)."""
        more = []
        while (fire := self.fires.get(timeout=0)) is not None:
            more.append(fire)
        return more

    def _lock_held(self, fire: Fire, exc: LockHeld) -> None:
        """Another run holds the fire's job lock: no-op, wait (queued again later) or give up."""
        holder = lock_holder(exc)
        now = datetime.now(UTC)
        hours = self.cfg.scheduler.catch_up_hours
        decision = lock_decision(fire, getattr(exc, "holder_as_of", None), now, hours)
        if decision == "no-op":
            run_id = getattr(exc, "holder_run_id", None)
            who = f"run {run_id}" if run_id is not None else "another run"  # its as_of is the fire's
            log.info("%s: skipped, %s holds the job's lock and scores the same as_of", fire.label, who)
            return
        if decision == "give-up":
            log.warning("%s: skipped, %s still holds the job's lock %gh (scheduler.catch_up_hours) after "
                        "the fire; this fire is not retried (score it with batch-scorer backfill)",
                        fire.label, holder, hours)
            return
        deadline = lock_deadline(fire, hours)
        if fire.retries == 0:
            log.warning("%s: waiting for the job's lock, held by %s; retrying until %s",
                        fire.label, holder, deadline.astimezone(self.tz).isoformat())
        else:
            log.debug("%s: the job's lock is still held by %s", fire.label, holder)
        delay = min(retry_delay(fire.retries), (deadline - now).total_seconds())
        self.fires.put(replace(fire, retries=fire.retries + 1), delay=max(delay, 0.0), lock_wait=True)

    def _reload(self) -> None:
        """SIGHUP: re-read the config file and swap in its jobs and schedules, or keep the old ones."""
        self._reload_asked = False
        if self._reload_fn is None:
            log.warning("received SIGHUP: this daemon was given a configuration object, not a file; "
                        "there is nothing to reload")
            return
        source = self.cfg.source_file or "the configuration"
        try:
            new = self._reload_fn()
            new_triggers = triggers(new, self.names)
        except Exception as exc:  # noqa: BLE001 - a bad edit must not stop the daemon
            log.error("received SIGHUP: reloading %s failed, keeping the configuration in use: %s",
                      source, _one_line(exc))
            return
        changes = config_changes(self.cfg, new, self.triggers, new_triggers)
        self.cfg = keep_restart_settings(self.cfg, new)
        self.tz, self.triggers = ZoneInfo(new.timezone), new_triggers
        now = datetime.now(UTC)
        for name in changes.removed:
            self.scheduler.remove_job(name)
            for fire in self.fires.drop_job(name):
                log.info("%s: not run: the job was removed from the configuration", fire.label)
        for name in changes.rescheduled:
            self.scheduler.remove_job(name)
            self._add_job(name, new_triggers[name], now)
        for name in changes.added:
            self._add_job(name, new_triggers[name], now)
        log.info("received SIGHUP: reloaded %s: %s", source, changes.summary())
        for name in (*changes.added, *changes.rescheduled):
            self._log_next(name)

    def _install_signals(self) -> Callable[[], None]:
        if not _main_thread():
            return lambda: None
        previous: dict[int, Any] = {}

        def on_stop(signum: int, _frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            first = self._stop_signal is None
            self._stop_signal = self._stop_signal or signum
            self._stop.set()
            if self._running is None:
                log.info("received %s: stopping", name)
                return
            timeout = self.cfg.scheduler.stop_timeout_seconds
            if first and timeout > 0:
                log.warning("received %s: taking no new fires; the run of job %s may finish for %gs",
                            name, self._running.job, timeout)
                signal.setitimer(signal.ITIMER_REAL, timeout)
                return
            self._interrupt(signum)

        def on_alarm(_signum: int, _frame: FrameType | None) -> None:
            if self._running is not None:
                log.warning("the run did not finish within scheduler.stop_timeout_seconds; rolling it back")
                self._interrupt(self._stop_signal or signal.SIGTERM)

        def on_hup(_signum: int, _frame: FrameType | None) -> None:
            # Only a flag: the main loop reloads between fires, so a run in
            # progress finishes with the configuration it started with.
            self._reload_asked = True

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_stop)
        previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, on_alarm)
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)

        def restore() -> None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for signum, old in previous.items():
                signal.signal(signum, old)

        return restore

    def _interrupt(self, signum: int) -> None:
        if self._interrupting:
            return
        self._interrupting = True
        raise Interrupted(signum)


def _announced() -> None:
    """The APScheduler job body: nothing; the fire is queued by the submission listener."""


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
