"""One rule for turning whatever a user gives into an as_of date.

An as_of is one calendar date. Wherever a date is taken (the command line, the
Python API, the configuration), :func:`to_date` normalises it the same way: a
``date`` is itself; a ``datetime`` or pandas ``Timestamp`` that is
timezone-aware is converted to the configured time zone and its date taken; a
naive one is read as a wall-clock time there (its date); a string is an ISO
date (``2026-03-31``) or ISO date-time (``2026-03-31T23:30+00:00``) read the
same way; a numpy ``datetime64`` is a naive date-time. Anything else, and an
impossible date (``2026-02-30``), is a :class:`batch_scorer.errors.UsageError`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from batch_scorer.errors import UsageError


def to_date(value: Any, timezone: str, what: str = "as_of") -> date:
    """``value`` as one calendar date in ``timezone`` (module doc)."""
    if isinstance(value, datetime):  # also pandas.Timestamp (and NaT, a datetime too)
        if value != value:  # NaT: the one datetime that is not equal to itself
            raise UsageError(f"{what} {value!r} is not a date (NaT: a missing value)")
        if value.tzinfo is not None:
            return value.astimezone(ZoneInfo(timezone)).date()
        return value.date()
    if isinstance(value, date):
        return value
    if type(value).__name__ == "datetime64":
        try:
            return to_date(value.astype("datetime64[us]").item(), timezone, what)
        except (ValueError, OverflowError, AttributeError):
            raise UsageError(f"{what} {value!r} is not a date (NaT or out of range)") from None
    if isinstance(value, str):
        return _from_text(value, timezone, what)
    raise UsageError(
        f"{what} must be a date, a datetime, a pandas Timestamp or an ISO string like "
        f"2026-03-31; got {type(value).__name__} {value!r}"
    )


def _from_text(value: str, timezone: str, what: str) -> date:
    text = value.strip()
    try:
        return date.fromisoformat(text)
    except ValueError:
        pass
    try:
        return to_date(datetime.fromisoformat(text), timezone, what)
    except ValueError as exc:
        raise UsageError(f"{what} {value!r} is not a valid date ({exc}); use YYYY-MM-DD, e.g. 2026-03-31") from None


def today(timezone: str, now: datetime | None = None) -> date:
    """Today's date in ``timezone``."""
    return (now or datetime.now(UTC)).astimezone(ZoneInfo(timezone)).date()


def check_not_future(as_of: date, timezone: str, future_days: int, allowed: bool, now: datetime | None = None) -> None:
    """Refuse an as_of later than today in ``timezone`` plus ``future_days`` (a typo such as
    9999-12-31 would hide every later run from the ``_latest`` views), unless ``allowed``."""
    limit = today(timezone, now) + timedelta(days=future_days)
    if as_of > limit and not allowed:
        raise UsageError(
            f"as_of {as_of} is later than today ({today(timezone, now)} in {timezone}) plus "
            f"defaults.future_days ({future_days}): a typo? Scoring it would make it the latest "
            "as_of of every entity. To score a future date on purpose, pass --allow-future "
            "(allow_future=True from Python)."
        )


AS_OF_RULES = ("fire_date", "previous_day")


def as_of_for(rule: str, moment: datetime, timezone: str) -> date:
    """The as_of a job's ``as_of:`` rule gives at ``moment`` (a fire time, or now): the
    moment's date in ``timezone`` (``fire_date``), or the day before (``previous_day``)."""
    day = moment.astimezone(ZoneInfo(timezone)).date()
    return day - timedelta(days=1) if rule == "previous_day" else day
