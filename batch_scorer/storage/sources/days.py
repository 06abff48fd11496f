"""One as_of day of a source table, cut in the configured time zone.

A table source with an ``as_of_column`` reads the rows of one day. What a day
is depends on what the column holds:

- ``date`` and ``timestamp without time zone`` (PostgreSQL), declared ``DATE``
  (SQLite): a plain date range ``col >= as_of AND col < as_of + 1``; a naive
  timestamp is the wall time of the configured zone already. A PostgreSQL
  text column gets the same range as ISO text (dates or naive timestamps).
- ``timestamp with time zone`` (PostgreSQL): instants from the zone's local
  midnight of as_of to the next local midnight, computed here with zoneinfo
  (a DST day has 23 or 25 hours), bound as timestamptz: the comparison does
  not depend on the session's time zone and can use an index on the column.
- any other SQLite column holds text. Supported formats: dates
  (``2026-03-29``), naive ISO timestamps (``2026-03-29 23:30:00[.ffffff]``,
  ``T`` or space), read as wall time; and ISO timestamps with an offset
  (``2026-03-29T23:30:00[.ffffff]+02:00`` or ``...Z``; seconds required,
  offset as ``+HH:MM``), compared as instants with SQLite's ``datetime()`` on
  the whole seconds (the day's bounds are whole seconds, so that is exact).
  A wider text range in front keeps an index on the column usable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa

from batch_scorer.errors import UsageError

# A text value with an offset, as SQLite's date functions read it.
_ISO_SECONDS = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9][Tt ][0-9][0-9]:[0-9][0-9]:[0-9][0-9]*"
_WITH_OFFSET = _ISO_SECONDS + "[+-][0-9][0-9]:[0-9][0-9]"
_WITH_Z = _ISO_SECONDS + "[Zz]"
# Offsets reach 14 hours either way, and the zone's own as much: a value
# written in any offset lies within two days of its instant's local date.
_TEXT_MARGIN = timedelta(days=2)


@dataclass(frozen=True)
class Day:
    """The as_of day: its date and the next one, and their local midnights as UTC instants."""

    first: date
    after: date
    start: datetime
    end: datetime


def as_of_day(job: str, as_of: date, timezone: str) -> Day:
    """The bounds of ``as_of`` in ``timezone``; UsageError if they leave the supported date range."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"job {job!r}: unknown time zone {timezone!r}; use an IANA name such as "
                         "Europe/Berlin or UTC.") from None
    try:
        after = as_of + timedelta(days=1)
        # fold=0: a midnight that does not exist (a DST gap) maps to the
        # instant the day starts; one that occurs twice, to its first time.
        start = datetime.combine(as_of, time(), zone).astimezone(UTC)
        end = datetime.combine(after, time(), zone).astimezone(UTC)
    except (OverflowError, ValueError):
        raise UsageError(
            f"job {job!r}: as_of {as_of.isoformat()} is at the edge of the supported date range "
            f"(0001-01-01 to 9999-12-31): its day in {timezone} has no end (or start) that can be "
            "computed. Pick an as_of inside the range."
        ) from None
    return Day(as_of, after, start, end)


def day_filter(col: sa.ColumnElement[Any], dialect: str, day: Day) -> sa.ColumnElement[bool]:
    """The condition selecting ``day``'s rows of the as_of column ``col``."""
    kind = col.type
    if dialect == "postgresql":
        if isinstance(kind, sa.DateTime) and kind.timezone:
            return sa.and_(col >= _bind(day.start, sa.DateTime(timezone=True)),
                           col < _bind(day.end, sa.DateTime(timezone=True)))
        return _date_range(col, day.first, day.after, sa.String() if isinstance(kind, sa.String) else sa.Date())
    if isinstance(kind, sa.Date):  # declared DATE on SQLite: dates only
        return _date_range(col, day.first, day.after, sa.Date())
    return _sqlite_text_day(col, day)


def _sqlite_text_day(col: sa.ColumnElement[Any], day: Day) -> sa.ColumnElement[bool]:
    seconds = sa.func.substr(col, 1, 19)
    utc = sa.case(
        (col.op("GLOB")(_WITH_OFFSET), sa.func.datetime(seconds.op("||")(sa.func.substr(col, -6)))),
        (col.op("GLOB")(_WITH_Z), sa.func.datetime(seconds)),
    )
    wall = sa.and_(utc.is_(None), _date_range(col, day.first, day.after, sa.String()))
    instant = sa.and_(utc >= _bind(_sqlite_utc(day.start), sa.String()),
                      utc < _bind(_sqlite_utc(day.end), sa.String()))
    wide = _date_range(col, _shift(day.first, -_TEXT_MARGIN), _shift(day.after, _TEXT_MARGIN), sa.String())
    return sa.and_(wide, sa.or_(wall, instant))


def _date_range(col: sa.ColumnElement[Any], lo: date | None, hi: date | None,
                kind: sa.types.TypeEngine[Any]) -> sa.ColumnElement[bool]:
    """``lo <= col < hi`` (an open end for None), dates bound as dates or as ISO text."""
    as_text = isinstance(kind, sa.String)
    parts = []
    if lo is not None:
        parts.append(col >= _bind(lo.isoformat() if as_text else lo, kind))
    if hi is not None:
        parts.append(col < _bind(hi.isoformat() if as_text else hi, kind))
    return sa.and_(sa.true(), *parts)


def _bind(value: Any, kind: sa.types.TypeEngine[Any]) -> sa.BindParameter[Any]:
    return sa.bindparam(None, value, type_=kind)


def _sqlite_utc(instant: datetime) -> str:
    """An instant as SQLite's ``datetime()`` writes it in UTC."""
    return instant.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="seconds")


def _shift(day: date, by: timedelta) -> date | None:
    """``day`` moved by ``by``; None past either end of the calendar (that side stays open)."""
    try:
        return day + by
    except OverflowError:
        return None
