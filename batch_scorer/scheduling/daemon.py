"""The ``batch-scorer schedule`` daemon (APScheduler 3) and ``--next``.

How it works (README "Scheduling and backfill"):

- Each job with a ``schedule:`` gets an APScheduler job on a
  :class:`~batch_scorer.config.cron.ScheduleTrigger` in the configured timezone. The
  APScheduler job only *announces* the fire (job, fire time); the runs happen
  one at a time in the daemon's main thread, so runs never overlap, SIGTERM
  can roll a run back, and a fire that comes while its job is still running
  waits (one pending fire per job; further ones are coalesced with a log line).
- as_of of a fire: the fire time's date in the timezone (``as_of: fire_date``,
  the default) or the day before (``as_of: previous_day``).
- A fire is *done* when the ledger has a succeeded run of the job for its
  as_of that started at or after the fire time. Checked while holding the
  job's lock right before the run starts, so two daemons (or a daemon and a
  cron line) on one database score a fire once: the loser either finds the
  lock held (logged, skipped) or finds the fire done.
- Catch-up: on start, the latest fire of each job within
  ``scheduler.catch_up_hours`` runs once if it is not done. APScheduler's
  misfire grace is not relied on (it is set generously anyway, and a missed
  fire it reports is queued like any other).
- SIGTERM/SIGINT: no new fires; a run in progress may finish for
  ``scheduler.stop_timeout_seconds``, then it is interrupted and rolled back
  (a second signal interrupts it at once); the daemon exits 0.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from batch_scorer.errors import BatchScorerError, DatabaseError, LockHeld, UsageError
from batch_scorer.masking import first_line, mask_text
from batch_scorer.runtime.progress import row_progress
from batch_scorer.runtime.run import RunResult, run_job
from batch_scorer.runtime.signals import Interrupted
from batch_scorer.storage.schema import create_tool_tables, scoring_runs

log = logging.getLogger(__name__)

TRIGGER = "schedule"


@dataclass(frozen=True)
class Fire:
    """One fire of one job: when it was due and the as_of it scores."""

    job: str
    fire_time: datetime
    as_of: date
    kind: str = "schedule"  # schedule | catch-up | missed


def fire_as_of(job: JobConfig, fire_time: datetime, tz: ZoneInfo) -> date:
    """The as_of a fire implies: its date in ``tz``, or the day before for ``previous_day``."""
    day = fire_time.astimezone(tz).date()
    return day - timedelta(days=1) if job.as_of == "previous_day" else day


def triggers(cfg: Config, names: Sequence[str] = ()) -> dict[str, ScheduleTrigger]:
    """The trigger of each scheduled job (all of them, or ``names``)."""
    for name in names:
        if cfg.job(name).schedule is None:
            raise UsageError(f"job {name!r} has no schedule: key; add one (e.g. schedule: \"0 2 * * *\")")
    chosen = [cfg.job(n) for n in names] if names else list(cfg.jobs.values())
    tz = ZoneInfo(cfg.timezone)
    # scheduler.allow_seconds_field (test-only 6-field crons) where the config has it.
    seconds = bool(getattr(cfg.scheduler, "allow_seconds_field", False))
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
    tz = ZoneInfo(cfg.timezone)
    start = after or datetime.now(UTC)
    if start.tzinfo is None:
        start = start.replace(tzinfo=tz)
    fires = []
    for name, trigger in triggers(cfg, names).items():
        job = cfg.job(name)
        fires.extend(Fire(name, f.astimezone(tz), fire_as_of(job, f, tz)) for f in next_fires(trigger, start, count))
    return fires


def done_by(engine: Engine, job: str, as_of: date, fire_time: datetime) -> int | None:
    """The run_id of a succeeded run that scored this fire (started at or after it), if any."""
    stmt = (
        sa.select(scoring_runs.c.run_id)
        .where(
            scoring_runs.c.job == job,
            scoring_runs.c.as_of == as_of,
            scoring_runs.c.status == "succeeded",
            scoring_runs.c.started_at >= fire_time.astimezone(UTC),
        )
        .order_by(scoring_runs.c.run_id)
        .limit(1)
    )
    with engine.connect() as conn:
        return conn.execute(stmt).scalar()


def catch_up(cfg: Config, engine: Engine, names: Sequence[str] = (), now: datetime | None = None) -> list[Fire]:
    """The fires to run on start: each job's latest fire in the catch-up window, if not done."""
    tz = ZoneInfo(cfg.timezone)
    now = now or datetime.now(UTC)
    window = timedelta(hours=cfg.scheduler.catch_up_hours)
    out = []
    for name, trigger in triggers(cfg, names).items():
        fire_time = latest_fire(trigger, now, window)
        if fire_time is not None:
            fire_time = fire_time.astimezone(tz)  # shown in the configured timezone
        if fire_time is None:
            log.info("job %s: no fire in the last %gh to catch up", name, cfg.scheduler.catch_up_hours)
            continue
        fire = Fire(name, fire_time, fire_as_of(cfg.job(name), fire_time, tz), "catch-up")
        run_id = done_by(engine, name, fire.as_of, fire_time)
        if run_id is not None:
            log.info("job %s: last fire %s (as_of %s) was scored by run %d; nothing to catch up",
                     name, fire_time.isoformat(), fire.as_of, run_id)
        else:
            log.warning("job %s: last fire %s (as_of %s) has no succeeded run; running it now (catch-up)",
                        name, fire_time.isoformat(), fire.as_of)
            out.append(fire)
    return out


def run_fire(cfg: Config, engine: Engine, fire: Fire) -> RunResult:
    """Run one fire (the done-check is repeated under the job's lock) and log one line for it.

    Errors are logged and returned, never raised (the daemon keeps going);
    only an interrupt (:class:`KeyboardInterrupt`) propagates.
    """
    what = f"job {fire.job} fire {fire.fire_time.isoformat()} ({fire.kind}) as_of {fire.as_of}"

    def already(_model_version: str) -> str | None:
        run_id = done_by(engine, fire.job, fire.as_of, fire.fire_time)
        return f"already scored by run {run_id}" if run_id is not None else None

    try:
        # Off a terminal (systemd, tests) this logs rows every BATCH_SCORER_PROGRESS_SECONDS.
        with row_progress(f"job {fire.job}", interactive=False) as progress:
            result = run_job(cfg, engine, fire.job, fire.as_of, TRIGGER, progress, skip_if=already)
    except LockHeld as exc:
        log.warning("%s: skipped, another run holds the job's lock: %s", what, exc)
        return RunResult(fire.job, "skipped", fire.as_of, error=str(exc), exit_code=exc.exit_code)
    except BatchScorerError as exc:
        log.error("%s: failed: %s", what, exc)
        return RunResult(fire.job, "failed", fire.as_of, error=str(exc), exit_code=exc.exit_code)
    except sa.exc.SQLAlchemyError as exc:
        message = f"database error: {mask_text(first_line(exc))}"
        log.error("%s: failed: %s", what, message)
        return RunResult(fire.job, "failed", fire.as_of, error=message, exit_code=1)
    except Exception as exc:  # noqa: BLE001 - the daemon must outlive any one run's bug
        log.exception("%s: failed with an unexpected error", what)
        return RunResult(fire.job, "failed", fire.as_of, error=mask_text(str(exc)), exit_code=1)
    if result.status == "already_done":
        log.info("%s: skipped, %s", what, result.error)
    else:
        log.info("%s: succeeded, run %s, %d rows scored, %d rejected, %.1fs",
                 what, result.run_id, result.rows_scored, result.rows_rejected, result.seconds)
    return result


class _Fires:
    """Fires waiting to run, oldest first, at most one per job (newer ones coalesce)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        self._pending: dict[str, Fire] = {}
        self._lock = threading.Lock()

    def put(self, fire: Fire) -> None:
        with self._lock:
            old = self._pending.get(fire.job)
            if old is not None:
                # In UTC: same-zone comparisons go by the wall clock (wrong in the repeated hour).
                if fire.fire_time.astimezone(UTC) <= old.fire_time.astimezone(UTC):
                    return
                log.warning(
                    "job %s: fire %s (as_of %s) coalesced into the newer fire %s (as_of %s): "
                    "the job's previous run was still going",
                    fire.job, old.fire_time.isoformat(), old.as_of, fire.fire_time.isoformat(), fire.as_of,
                )
                self._pending[fire.job] = fire
                return
            self._pending[fire.job] = fire
        self._queue.put(fire.job)

    def get(self, timeout: float) -> Fire | None:
        try:
            name = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        with self._lock:
            return self._pending.pop(name)


class Daemon:
    """Runs scheduled fires until :meth:`stop` or SIGTERM/SIGINT. Use :func:`serve`."""

    def __init__(self, cfg: Config, engine: Engine, names: Sequence[str] = ()) -> None:
        self.cfg = cfg
        self.engine = engine
        self.tz = ZoneInfo(cfg.timezone)
        self.triggers = triggers(cfg, names)
        self.fires = _Fires()
        self._stop = threading.Event()
        self._stop_signal: int | None = None
        self._running: Fire | None = None
        self._interrupting = False
        grace = max(cfg.scheduler.catch_up_hours * 3600, 3600)
        # UTC: APScheduler subtracts and compares its `now` with fire times, which
        # is exact across DST only between instants of different zones or UTC.
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": int(grace)},
        )

    def _announce(self, event: JobEvent) -> None:
        # Runs on APScheduler's thread: only queue the fire.
        if event.code == EVENT_JOB_MISSED:
            times = [event.scheduled_run_time]
            kind = "missed"
        else:
            times = list(getattr(event, "scheduled_run_times", []))
            kind = "schedule"
        if not times or self._stop.is_set():
            return
        fire_time = max(times).astimezone(UTC).astimezone(self.tz)
        job = self.cfg.job(event.job_id)
        self.fires.put(Fire(job.name, fire_time, fire_as_of(job, fire_time, self.tz), kind))

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
            for name, trigger in self.triggers.items():
                first = next_fires(trigger, now, 1)
                # (next_run_time=None would mean "paused" to APScheduler.)
                when = {"next_run_time": first[0]} if first else {}
                self.scheduler.add_job(_announced, trigger, id=name, name=name, **when)
            self.scheduler.add_listener(self._announce, EVENT_JOB_SUBMITTED | EVENT_JOB_MISSED)
            self.scheduler.start()
            for job in self.scheduler.get_jobs():
                log.info("job %s: schedule %r (%s), next fire %s", job.id, self.cfg.job(job.id).schedule,
                         self.cfg.timezone, job.next_run_time.astimezone(self.tz).isoformat())
            log.info("scheduler started: %d job(s); SIGTERM or Ctrl-C stops it", len(self.triggers))
            self._loop()
        except Interrupted as exc:
            log.warning("stopped by %s: the run in progress was rolled back", exc.signame)
        finally:
            self._stop.set()
            if self.scheduler.running:
                self.scheduler.shutdown(wait=False)
            restore()
        log.info("scheduler stopped")
        return 0

    def _loop(self) -> None:
        while not self._stop.is_set():
            fire = self.fires.get(timeout=0.2)
            if fire is None or self._stop.is_set():
                continue
            self._running = fire
            try:
                run_fire(self.cfg, self.engine, fire)
            finally:
                self._running = None
                if _main_thread():
                    signal.setitimer(signal.ITIMER_REAL, 0)

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

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_stop)
        previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, on_alarm)

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
