"""Cron expressions: a job's ``schedule:`` as an APScheduler 3 trigger that is right across DST.

Syntax: standard 5-field crontab(5), ``minute hour day-of-month month
day-of-week``, each field ``*``, a number, a range ``a-b``, a step ``*/n``,
``a-b/n`` or ``a/n`` (``a`` to the field's maximum), or a comma list of these.
Months take names ``jan``..``dec``, weekdays ``sun``..``sat``; weekday 0 and 7
are both Sunday (APScheduler 3 alone would read 0 as Monday). ``?`` is
accepted as ``*`` in the two day fields.

Which days fire (crontab(5)): when both day-of-month and day-of-week are
restricted (the field does not start with ``*``), a day fires if *either*
matches: ``0 2 13 * 5`` fires on every 13th and every Friday. When one of
them starts with ``*`` (``*``, ``*/2``), both must match, so ``0 2 */2 * 1``
is odd days that are Mondays. A schedule that can never fire (``0 0 30 2 *``)
is an error.

Fire times are computed here over local calendar dates and wall times in the
job's timezone, each wall time converted to UTC with zoneinfo (APScheduler
3.11's ``CronTrigger`` loses fires near DST changes). Every matching local
date fires each matching wall time once, with these DST rules:

- Spring (clocks jump, e.g. 02:00 -> 03:00): a wall time that does not exist
  that day fires once, at the same UTC instant as that wall time in the offset
  before the change, i.e. later by the size of the jump (02:30 -> 03:30 in
  Europe/Berlin, 02:15 -> 02:45 on Australia/Lord_Howe's 30-minute change). If
  that instant is also another fire of the schedule (hourly ``30 * * * *``:
  the shifted 02:30 is 03:30), it fires once: the schedule keeps firing by
  elapsed time.
- Autumn (clocks go back, e.g. 03:00 -> 02:00, so 02:00-02:59 happens twice):
  a wall time in the repeated period fires at its first occurrence only,
  unless the hour field matches that hour with ``*``, a range or a step
  (``30 * * * *``, ``0 1-3 * * *``, ``*/20 */2 * * *``): then it fires at both
  occurrences, an hour of elapsed time apart, like any other hour. A plain
  hour number (``30 2 * * *``, ``0 1,2 * * *``) means "that wall time once".

A 6-field form with a leading seconds field is for tests (a daemon firing
within seconds), not production: ``cron_trigger(..., allow_seconds=True)``, which
the configuration's ``scheduler.allow_seconds_field`` turns on (the environment
variable ``BATCH_SCORER_ALLOW_SECONDS_CRON=1`` sets that key at load).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger

_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_ITEM = re.compile(r"^(\*|\?|[a-z0-9]+)(?:-([a-z0-9]+))?(?:/(\d+))?$")
_DAY = 86400
# The calendar repeats every 400 years, so a schedule that can fire at all fires
# within them (29 February on a given weekday can be 28 years away); the day walk
# stops after this many steps (a month that does not match is one step).
_MAX_DAYS = 400 * 366


@dataclass(frozen=True)
class _Spec:
    """One cron field's name and value range (``names[i]`` means ``first + i``)."""

    name: str
    first: int
    last: int
    names: tuple[str, ...] = ()
    wildcard: tuple[int, int] | None = None  # the range of "*" when it differs from first..last


_SECOND = _Spec("seconds field: second", 0, 59)
_MINUTE = _Spec("minute", 0, 59)
_HOUR = _Spec("hour", 0, 23)
_DOM = _Spec("day-of-month", 1, 31)
_MONTH = _Spec("month", 1, 12, _MONTH_NAMES)
_DOW = _Spec("day-of-week", 0, 7, _DAY_NAMES, wildcard=(0, 6))


@dataclass(frozen=True)
class _Field:
    """A parsed field: its values, whether it is restricted, and which values a range matched."""

    values: tuple[int, ...]
    restricted: bool  # crontab(5): the field does not start with "*"
    ranged: frozenset[int]  # values matched by an item with "*", a range or a step


def _number(token: str, spec: _Spec) -> int:
    if token in spec.names:
        return spec.first + spec.names.index(token)
    if not token.isdigit():
        raise ValueError(f"{spec.name} {token!r} is not a number" + (
            f" or a name ({spec.names[0]}..{spec.names[-1]})" if spec.names else ""))
    value = int(token)
    if not spec.first <= value <= spec.last:
        raise ValueError(f"{spec.name} {value} is out of range {spec.first}-{spec.last}")
    return value


def _item_values(item: str, spec: _Spec) -> tuple[range, bool]:
    """The values of one comma item, and whether it is a range (``*``, ``a-b`` or a step)."""
    match = _ITEM.match(item)
    if not match or (match.group(1) == "?" and spec not in (_DOM, _DOW)):
        raise ValueError(f"{spec.name} item {item!r} is not understood")
    first, last, step_text = match.groups()
    step = int(step_text) if step_text else 1
    if step < 1:
        raise ValueError(f"{spec.name} item {item!r}: a step must be at least 1")
    if first in ("*", "?"):
        if last is not None:
            raise ValueError(f"{spec.name} item {item!r} is not understood")
        lo, hi = spec.wildcard or (spec.first, spec.last)
        return range(lo, hi + 1, step), True
    lo = _number(first, spec)
    if last is None:
        # "a/n" is "a to the field's maximum, every n" (as APScheduler and cronie read it).
        hi = (spec.wildcard or (spec.first, spec.last))[1] if step_text else lo
    else:
        hi = _number(last, spec)
    if hi < lo:
        raise ValueError(f"{spec.name} range {item!r} goes backwards")
    return range(lo, hi + 1, step), last is not None or step_text is not None


def _parse_field(text: str, spec: _Spec) -> _Field:
    values: set[int] = set()
    ranged: set[int] = set()
    for item in text.lower().split(","):
        got, is_range = _item_values(item, spec)
        # Day-of-week 7 is Sunday, 0.
        days = {v % 7 for v in got} if spec is _DOW else set(got)
        values |= days
        if is_range:
            ranged |= days
    return _Field(tuple(sorted(values)), not text.startswith(("*", "?")), frozenset(ranged))


def _days_in_month(month: int) -> int:
    return 29 if month == 2 else 30 if month in (4, 6, 9, 11) else 31


def _next_time(lower: int, hours: tuple[int, ...], minutes: tuple[int, ...],
               seconds: tuple[int, ...]) -> int | None:
    """The first second of the day ``>= lower`` made of the allowed hour, minute and second."""
    hour, rest = divmod(max(lower, 0), 3600)
    minute, second = divmod(rest, 60)
    for h in hours[bisect.bisect_left(hours, hour):]:
        if h > hour:
            return h * 3600 + minutes[0] * 60 + seconds[0]
        for m in minutes[bisect.bisect_left(minutes, minute):]:
            if m > minute:
                return h * 3600 + m * 60 + seconds[0]
            i = bisect.bisect_left(seconds, second)
            if i < len(seconds):
                return h * 3600 + m * 60 + seconds[i]
    return None


@dataclass(frozen=True)
class _Piece:
    """Wall times ``[lo, hi)`` (seconds of the day) that are ``offset`` from UTC.

    ``repeat``: the second occurrence of wall times that happen twice (autumn).
    A spring gap is a piece with the offset from before the change."""

    lo: int
    hi: int
    offset: timedelta
    repeat: bool


def _offset(tz: tzinfo, utc: datetime) -> timedelta:
    return utc.replace(tzinfo=UTC).astimezone(tz).utcoffset() or timedelta(0)


def _offset_spans(tz: tzinfo, start: datetime, end: datetime) -> list[tuple[datetime, datetime, timedelta]]:
    """``(from, to, offset)`` in naive UTC covering ``[start, end)``: offset changes, to the second."""
    spans = []
    here, here_off = start, _offset(tz, start)
    probe = start
    while probe < end:
        step = min(probe + timedelta(hours=1), end)
        if _offset(tz, step) == here_off:
            probe = step
            continue
        lo, hi = probe, step  # the offset changes in (lo, hi]: find the second
        while hi - lo > timedelta(seconds=1):
            mid = (lo + (hi - lo) / 2).replace(microsecond=0)
            lo, hi = (mid, hi) if _offset(tz, mid) == here_off else (lo, mid)
        spans.append((here, hi, here_off))
        here, here_off = hi, _offset(tz, hi)
        probe = hi
    spans.append((here, end, here_off))
    return spans


@lru_cache(maxsize=4096)
def _day_pieces(tz: tzinfo, day: date) -> tuple[_Piece, ...]:
    """How the wall times of local date ``day`` map to UTC, in order of their instants."""
    midnight = datetime.combine(day, time())
    # Any UTC offset is within 16 hours, so these spans cover every wall time of the day.
    spans = _offset_spans(tz, midnight - timedelta(hours=16), midnight + timedelta(hours=40))
    pieces: list[_Piece] = []
    covered: datetime | None = None
    before = spans[0][2]
    for start, end, off in spans:
        lo, hi = start + off, end + off
        if covered is not None and lo > covered:
            pieces.append(_piece(midnight, covered, lo, before, repeat=False))  # the spring gap
        if covered is not None and lo < covered:
            pieces.append(_piece(midnight, lo, min(hi, covered), off, repeat=True))
            lo = min(hi, covered)
        pieces.append(_piece(midnight, lo, hi, off, repeat=False))
        covered = hi if covered is None else max(covered, hi)
        before = off
    return tuple(p for p in pieces if p.lo < p.hi)


def _piece(midnight: datetime, lo: datetime, hi: datetime, off: timedelta, *, repeat: bool) -> _Piece:
    """A piece clipped to the day ``midnight`` starts."""
    def second(t: datetime) -> int:
        return min(max(int((t - midnight).total_seconds()), 0), _DAY)

    return _Piece(second(lo), second(hi), off, repeat)


class ScheduleTrigger(BaseTrigger):
    """A cron schedule in a timezone, with the DST rules of this module; an APScheduler 3 trigger."""

    def __init__(self, expr: str, fields: list[str], timezone: tzinfo) -> None:
        self.expr = expr
        self.timezone = timezone
        second, minute, hour, dom, month, dow = (
            _parse_field(text, spec)
            for text, spec in zip(fields, (_SECOND, _MINUTE, _HOUR, _DOM, _MONTH, _DOW), strict=True)
        )
        self._seconds, self._minutes = second.values, minute.values
        self._hours = hour.values
        # Hours whose repeated autumn wall times fire a second time (see the module docstring).
        self._repeat_hours = tuple(sorted(hour.ranged))
        self._months, self._days, self._weekdays = set(month.values), set(dom.values), set(dow.values)
        self._either_day = dom.restricted and dow.restricted
        if not self._either_day:
            longest = max(_days_in_month(m) for m in self._months)
            if min(self._days) > longest:
                raise ValueError(f"day-of-month {fields[3]!r} never occurs in month {fields[4]!r}: "
                                 "the schedule would never fire")

    def __repr__(self) -> str:
        return f"ScheduleTrigger({self.expr!r}, timezone={str(self.timezone)!r})"

    __str__ = __repr__

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        """The first fire at or after ``now`` (after ``previous_fire_time``, if given, and no later
        than ``now``: APScheduler finds missed fires that way).

        In UTC: Python compares and subtracts two aware datetimes of one zone by
        their wall clocks, which is wrong in the autumn's repeated hour (APScheduler
        does both). Convert with ``.astimezone(tz)`` to show a fire."""
        # In UTC: arithmetic on aware datetimes of one zone is wall-clock
        # arithmetic, and would lose the autumn fold.
        start = now.astimezone(UTC)
        if previous_fire_time is not None:
            after_previous = previous_fire_time.astimezone(UTC) + timedelta(microseconds=1)
            start = after_previous if start <= previous_fire_time else min(start, after_previous)
        return self._first_at_or_after(start)

    def _day_matches(self, day: date) -> bool:
        dom = day.day in self._days
        dow = day.isoweekday() % 7 in self._weekdays
        return dom or dow if self._either_day else dom and dow

    def _first_at_or_after(self, start: datetime) -> datetime | None:
        start_utc = start.astimezone(UTC).replace(tzinfo=None)
        # From the day before: a spring-shifted fire of that day can be after midnight.
        day = start.astimezone(self.timezone).date() - timedelta(days=1)
        for _ in range(_MAX_DAYS):
            try:
                if day.month not in self._months:
                    day = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
                    continue
            except OverflowError:
                return None
            fire = self._first_on(day, start_utc) if self._day_matches(day) else None
            if fire is not None:
                # A shifted fire past midnight: the next day may fire before it.
                later = day + timedelta(days=1)
                if (fire + _offset(self.timezone, fire)).date() > day and self._day_matches(later):
                    other = self._first_on(later, start_utc)
                    fire = min(fire, other) if other is not None else fire
                return fire.replace(tzinfo=UTC)
            try:
                day += timedelta(days=1)
            except OverflowError:
                return None
        return None

    def _first_on(self, day: date, start_utc: datetime) -> datetime | None:
        """The earliest fire (naive UTC) of local date ``day`` at or after ``start_utc``."""
        midnight = datetime.combine(day, time())
        best: datetime | None = None
        for piece in _day_pieces(self.timezone, day):
            hours = self._repeat_hours if piece.repeat else self._hours
            if not hours:
                continue
            # Wall time w of this piece is the instant midnight + w - offset.
            need = start_utc + piece.offset - midnight
            lower = need.days * _DAY + need.seconds + (1 if need.microseconds else 0)
            wall = _next_time(max(lower, piece.lo), hours, self._minutes, self._seconds)
            if wall is not None and wall < piece.hi:
                fire = midnight + timedelta(seconds=wall) - piece.offset
                best = fire if best is None else min(best, fire)
        return best


def cron_trigger(expr: str, timezone: str | tzinfo, allow_seconds: bool = False) -> ScheduleTrigger:
    """Build the trigger for ``expr`` in ``timezone``; ``ValueError`` says what is wrong.

    ``allow_seconds`` accepts the test-only 6-field form (leading seconds field)."""
    if not isinstance(expr, str):
        raise ValueError("a schedule must be a cron string like '0 2 * * *'")
    values = expr.split()
    if len(values) == 6 and allow_seconds:
        fields = values
    elif len(values) == 5:
        fields = ["0", *values]
    else:
        raise ValueError(
            f"schedule {expr!r} has {len(values)} fields; a cron schedule has 5: "
            "minute hour day-of-month month day-of-week, e.g. '0 2 * * *' for 02:00 daily"
        )
    tz = ZoneInfo(timezone) if isinstance(timezone, str) else timezone
    try:
        return ScheduleTrigger(expr, fields, tz)
    except ValueError as exc:
        raise ValueError(f"schedule {expr!r} is not a valid cron expression: {exc}") from None


def fires_between(trigger: BaseTrigger, start: datetime, end: datetime) -> list[datetime]:
    """Every fire time ``t`` with ``start <= t <= end`` (aware datetimes), oldest first.

    Like the fire times of the helpers below, as the trigger gives them (UTC for
    a :class:`ScheduleTrigger`)."""
    out: list[datetime] = []
    end = end.astimezone(UTC)  # compare instants, not wall clocks (see get_next_fire_time)
    fire = trigger.get_next_fire_time(None, start)
    while fire is not None and fire.astimezone(UTC) <= end:
        out.append(fire)
        fire = trigger.get_next_fire_time(fire, fire)
    return out


def next_fires(trigger: BaseTrigger, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times strictly after ``after``."""
    out: list[datetime] = []
    after = after.astimezone(UTC)
    fire = trigger.get_next_fire_time(None, after)
    if fire is not None and fire.astimezone(UTC) <= after:
        fire = trigger.get_next_fire_time(fire, fire)
    while fire is not None and len(out) < count:
        out.append(fire)
        fire = trigger.get_next_fire_time(fire, fire)
    return out


def latest_fire(trigger: BaseTrigger, now: datetime, window: timedelta) -> datetime | None:
    """The latest fire time in ``[now - window, now]``, or None.

    Searches back in growing steps so a per-second schedule with a long window
    does not walk every second of it.
    """
    if window <= timedelta(0):
        return None
    now = now.astimezone(UTC)  # `now - step` on a local time would be wall-clock arithmetic
    step = timedelta(minutes=1)
    while True:
        step = min(step, window)
        fires = fires_between(trigger, now - step, now)
        if fires:
            return fires[-1]
        if step >= window:
            return None
        step *= 32
