"""Cron expressions: parse a job's ``schedule:`` into an APScheduler 3 ``CronTrigger``.

Standard 5-field cron (minute hour day-of-month month day-of-week), read the
way crontab(5) reads it. APScheduler 3's own ``CronTrigger.from_crontab``
numbers weekdays from Monday = 0 (its issue 286), so ``0 2 * * 0`` would fire
on Mondays; here the day-of-week field is translated to weekday names first
(0 and 7 = Sunday, as in crontab).

A 6-field form with a leading seconds field is accepted only when the
environment variable ``BATCH_SCORER_ALLOW_SECONDS_CRON=1`` is set: the tests
use it to have a daemon fire within seconds. It is not meant for production
schedules.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from apscheduler.triggers.cron import CronTrigger

ALLOW_SECONDS_ENV = "BATCH_SCORER_ALLOW_SECONDS_CRON"
FIELDS = ("minute", "hour", "day", "month", "day_of_week")
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DOW_ITEM = re.compile(r"^(\*|[a-z0-9]+)(?:-([a-z0-9]+))?(?:/(\d+))?$")


def seconds_allowed() -> bool:
    """True when the test-only 6-field (seconds) form is enabled."""
    return os.environ.get(ALLOW_SECONDS_ENV) == "1"


def _day_number(token: str) -> int:
    if token in _DAY_NAMES:
        return _DAY_NAMES.index(token)
    if token.isdigit() and 0 <= int(token) <= 7:
        return int(token) % 7
    raise ValueError(f"day-of-week {token!r} is not 0-7 or sun..sat")


def _day_of_week(field: str) -> str:
    """Translate a crontab day-of-week field (0/7 = Sunday) into APScheduler weekday names."""
    field = field.lower()
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()
    for item in field.split(","):
        match = _DOW_ITEM.match(item)
        if not match:
            raise ValueError(f"day-of-week item {item!r} is not understood")
        first, last, step = match.group(1), match.group(2), int(match.group(3) or 1)
        if step < 1:
            raise ValueError("a step must be at least 1")
        if first == "*":
            if last is not None:
                raise ValueError(f"day-of-week item {item!r} is not understood")
            lo, hi = 0, 6
        else:
            lo = _day_number(first)
            # "7" as the end of a range means Sunday at the end of the week.
            hi = (7 if last == "7" else _day_number(last)) if last is not None else lo
            if last is None and match.group(3):
                hi = 6
            if hi < lo:
                raise ValueError(f"day-of-week range {item!r} goes backwards")
        days.update(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(_DAY_NAMES[d] for d in sorted(days))


class ScheduleTrigger(CronTrigger):
    """A CronTrigger that, like cron, fires a fixed-hour job once on the autumn DST day.

    When clocks go back, wall times in the repeated hour happen twice;
    APScheduler would fire ``30 2 * * *`` at both. For a schedule with a fixed
    hour the second occurrence is skipped. A schedule whose hour field has a
    ``*`` (hourly or more often) keeps firing by elapsed time through the
    repeated hour. In spring, a wall time that does not exist (02:30 when
    clocks jump from 02:00 to 03:00) fires once, one hour later by the clock
    (03:30): the same instant in UTC as 02:30 in the old offset.
    """

    def __init__(self, *, skip_repeated_hour: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.skip_repeated_hour = skip_repeated_hour

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        fire = super().get_next_fire_time(previous_fire_time, now)
        while fire is not None:
            fire = fire.astimezone(UTC).astimezone(self.timezone)
            if not (self.skip_repeated_hour and _second_occurrence(fire)):
                return fire
            fire = super().get_next_fire_time(fire, fire)
        return None


def _second_occurrence(fire: datetime) -> bool:
    """True when ``fire``'s wall time happened earlier that night (clocks went back)."""
    first = fire.replace(fold=0)
    return first.utcoffset() != fire.utcoffset()


def cron_trigger(expr: str, timezone: str | tzinfo) -> ScheduleTrigger:
    """Build the trigger for ``expr`` in ``timezone``; ``ValueError`` says what is wrong."""
    if not isinstance(expr, str):
        raise ValueError("a schedule must be a cron string like '0 2 * * *'")
    values = expr.split()
    seconds = "0"
    if len(values) == 6 and seconds_allowed():
        seconds, values = values[0], values[1:]
    elif len(values) != 5:
        raise ValueError(
            f"schedule {expr!r} has {len(values)} fields; a cron schedule has 5: "
            "minute hour day-of-month month day-of-week, e.g. '0 2 * * *' for 02:00 daily"
        )
    fields = dict(zip(FIELDS, values, strict=True))
    fields["day_of_week"] = _day_of_week(fields["day_of_week"])
    try:
        return ScheduleTrigger(
            skip_repeated_hour="*" not in fields["hour"], second=seconds, timezone=timezone, **fields
        )
    except (ValueError, TypeError) as exc:
        raise ValueError(f"schedule {expr!r} is not a valid cron expression: {exc}") from None


def fires_between(trigger: CronTrigger, start: datetime, end: datetime) -> list[datetime]:
    """Every fire time ``t`` with ``start <= t <= end`` (aware datetimes), oldest first."""
    out: list[datetime] = []
    fire = trigger.get_next_fire_time(None, start)
    while fire is not None and fire <= end:
        out.append(fire)
        fire = trigger.get_next_fire_time(fire, fire)
    return out


def next_fires(trigger: CronTrigger, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times strictly after ``after``."""
    out: list[datetime] = []
    fire = trigger.get_next_fire_time(None, after)
    if fire is not None and fire <= after:
        fire = trigger.get_next_fire_time(fire, fire)
    while fire is not None and len(out) < count:
        out.append(fire)
        fire = trigger.get_next_fire_time(fire, fire)
    return out


def latest_fire(trigger: CronTrigger, now: datetime, window: timedelta) -> datetime | None:
    """The latest fire time in ``[now - window, now]``, or None.

    Searches back in growing steps so a per-second schedule with a long window
    does not walk every second of it.
    """
    if window <= timedelta(0):
        return None
    step = timedelta(minutes=1)
    while True:
        step = min(step, window)
        fires = fires_between(trigger, now - step, now)
        if fires:
            return fires[-1]
        if step >= window:
            return None
        step *= 32
