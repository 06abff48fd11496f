"""Every cron schedule fires exactly once per matching local date across both DST
changes, in every zone: ``batch-scorer schedule --next`` for each hour 0..23 (at a
minute inside the skipped and the repeated wall times), daily, weekly and monthly, in Europe/Berlin, America/New_York,
Australia/Sydney (changes in April and October), Australia/Lord_Howe (30-minute
changes) and UTC. A wall time that does not exist fires later by the size of the
jump; a repeated one fires at its first occurrence."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.helpers import cli_run, job, write_config

YEAR = 2026
ZONES = ("Europe/Berlin", "America/New_York", "Australia/Sydney", "Australia/Lord_Howe", "UTC")
# Minutes inside the skipped and the repeated wall times: a whole hour in most zones;
# on Lord Howe the gap is 02:00-02:30 and the repeated half hour 01:30-02:00.
MINUTES = {"Australia/Lord_Howe": (15, 45)}
DEFAULT_MINUTES = (30,)


def change_days(zone: str) -> list[date]:
    """The dates of ``YEAR`` on which the zone's UTC offset changes (noon to noon)."""
    tz = ZoneInfo(zone)

    def offset(day: date) -> timedelta | None:
        return datetime.combine(day, time(12), tz).utcoffset()

    days = [date(YEAR, 1, 1) + timedelta(days=i) for i in range(1, 365)]
    # These zones change in the small hours, so the first noon with the new offset is that day's.
    found = [d for d in days if offset(d) != offset(d - timedelta(days=1))]
    return found or [date(YEAR, 3, 29), date(YEAR, 10, 25)]  # UTC: Berlin's days, no change


def expected_fire(day: date, hour: int, minute: int, tz: ZoneInfo) -> datetime:
    """The documented fire of wall time hour:minute on ``day``: itself (its first
    occurrence if it happens twice), or, if it does not exist, later by the jump."""
    wall = datetime.combine(day, time(hour, minute))
    first = wall.replace(tzinfo=tz, fold=0)
    if first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall:
        return first.astimezone(UTC).astimezone(tz)
    jump = wall.replace(tzinfo=tz, fold=1).utcoffset() - first.utcoffset()  # type: ignore[operator]
    return (wall + jump).replace(tzinfo=tz)


def _kinds(change: date) -> dict[str, tuple[str, Callable[[date], bool], date, int]]:
    """kind -> (day fields of the cron, which dates match, --after date, --next count).

    The weekly and monthly kinds fire on the change day and the day after (the
    fire APScheduler's own CronTrigger loses)."""
    next_day = change + timedelta(days=1)
    weekdays = {change.isoweekday() % 7, next_day.isoweekday() % 7}
    month_days = {change.day, next_day.day}
    month_start = change.replace(day=1)
    before = (month_start - timedelta(days=40)).replace(day=15)
    return {
        "daily": ("* * *", lambda d: True, change - timedelta(days=3), 7),
        "weekly": (f"* * {','.join(map(str, sorted(weekdays)))}", lambda d: d.isoweekday() % 7 in weekdays,
                   change - timedelta(days=8), 6),
        "monthly": ("1 * *", lambda d: d.day == 1, before, 4),
        "monthly_on_change_day": (f"{','.join(map(str, sorted(month_days)))} * *",
                                  lambda d: d.day in month_days, before, 6),
    }


def _fires_by_job(tmp_path: Path, zone: str, day_fields: str, after: date, count: int) -> dict[str, list[str]]:
    minutes = MINUTES.get(zone, DEFAULT_MINUTES)
    jobs = {f"h{h:02d}m{m:02d}": job(schedule=f"{m} {h} {day_fields}") for h in range(24) for m in minutes}
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", jobs, timezone=zone)
    result = cli_run(cfg, "schedule", "--next", str(count), "--after", f"{after.isoformat()}T00:00")
    assert result.exit_code == 0, result.output
    out: dict[str, list[str]] = {}
    for line in result.output.strip().splitlines()[1:]:
        name, fire, _as_of = line.split()
        out.setdefault(name, []).append(fire)
    return out


@pytest.mark.parametrize("kind", ["daily", "weekly", "monthly", "monthly_on_change_day"])
@pytest.mark.parametrize("zone", ZONES)
def test_each_matching_local_date_fires_once_at_its_wall_time_across_both_changes(
    tmp_path: Path, zone: str, kind: str
) -> None:
    tz = ZoneInfo(zone)
    for change in change_days(zone):
        day_fields, matches, after, count = _kinds(change)[kind]
        fires = _fires_by_job(tmp_path, zone, day_fields, after, count)
        dates = [d for d in (after + timedelta(days=i) for i in range(400)) if matches(d)][:count]
        assert {change, change + timedelta(days=1)} <= set(dates) or kind == "monthly", (kind, dates)
        for hour in range(24):
            for minute in MINUTES.get(zone, DEFAULT_MINUTES):
                what = f"{zone} {kind} '{minute} {hour} {day_fields}' around {change}"
                got = [datetime.fromisoformat(f) for f in fires[f"h{hour:02d}m{minute:02d}"]]
                instants = [f.astimezone(UTC) for f in got]
                assert instants == sorted(set(instants)), f"{what}: not strictly increasing: {got}"
                want = [expected_fire(d, hour, minute, tz) for d in dates]
                assert [f.isoformat() for f in got] == [w.isoformat() for w in want], what
