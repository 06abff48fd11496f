"""Fire times and as_of values without waiting: ``schedule --next`` (DST included),
cron validation at config load, and which fire a restarted daemon catches up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from batch_scorer.config import load_config
from batch_scorer.scheduling.daemon import catch_up
from batch_scorer.storage.db import create_engine
from tests.helpers import cli_run, job, write_config
from tests.schedule_support import SECONDS_CRON


def _config(tmp_path: Path, tz: str = "Europe/Berlin", **jobs: dict[str, object]) -> Path:
    return write_config(tmp_path, f"sqlite:///{tmp_path / 'x.db'}",
                        {name: job(**settings) for name, settings in jobs.items()}, timezone=tz)


def _table(output: str) -> list[tuple[str, str, str]]:
    lines = output.strip().splitlines()
    assert lines[0].split() == ["job", "fire", "time", "as_of"]
    return [tuple(line.split()) for line in lines[1:]]  # type: ignore[misc]


def test_next_daily_0230_berlin_fires_once_on_the_spring_change_day(tmp_path: Path) -> None:
    cfg = _config(tmp_path, nightly={"schedule": "30 2 * * *"},
                  prev={"schedule": "30 2 * * *", "as_of": "previous_day"})
    result = cli_run(cfg, "schedule", "--next", "3", "--after", "2026-03-28T12:00")
    assert result.exit_code == 0, result.output
    assert _table(result.output) == [
        ("nightly", "2026-03-29T03:30:00+02:00", "2026-03-29"),  # 02:30 does not exist that night
        ("nightly", "2026-03-30T02:30:00+02:00", "2026-03-30"),
        ("nightly", "2026-03-31T02:30:00+02:00", "2026-03-31"),
        ("prev", "2026-03-29T03:30:00+02:00", "2026-03-28"),
        ("prev", "2026-03-30T02:30:00+02:00", "2026-03-29"),
        ("prev", "2026-03-31T02:30:00+02:00", "2026-03-30"),
    ]


def test_next_daily_0230_berlin_fires_once_on_the_autumn_change_day(tmp_path: Path) -> None:
    cfg = _config(tmp_path, nightly={"schedule": "30 2 * * *"})
    result = cli_run(cfg, "schedule", "--next", "3", "--after", "2026-10-24T12:00")
    assert result.exit_code == 0, result.output
    assert _table(result.output) == [
        ("nightly", "2026-10-25T02:30:00+02:00", "2026-10-25"),  # not again at 02:30+01:00
        ("nightly", "2026-10-26T02:30:00+01:00", "2026-10-26"),
        ("nightly", "2026-10-27T02:30:00+01:00", "2026-10-27"),
    ]


def test_next_hourly_schedule_keeps_firing_through_the_repeated_hour(tmp_path: Path) -> None:
    cfg = _config(tmp_path, hourly={"schedule": "30 * * * *"})
    result = cli_run(cfg, "schedule", "--next", "4", "--after", "2026-10-25T01:00")
    assert [row[1] for row in _table(result.output)] == [
        "2026-10-25T01:30:00+02:00", "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:30:00+01:00", "2026-10-25T03:30:00+01:00",
    ]


def test_day_of_week_numbers_mean_what_crontab_means(tmp_path: Path) -> None:
    # 0 and 7 are Sunday (APScheduler 3 alone would read 0 as Monday).
    cfg = _config(tmp_path, "UTC", sun={"schedule": "0 2 * * 0"}, sun7={"schedule": "0 2 * * 7"},
                  weekdays={"schedule": "0 2 * * 1-5"})
    result = cli_run(cfg, "schedule", "--next", "2", "--after", "2026-11-24T12:00")  # a Tuesday
    assert result.exit_code == 0, result.output
    assert _table(result.output) == [
        ("sun", "2026-11-29T02:00:00+00:00", "2026-11-29"),
        ("sun", "2026-12-06T02:00:00+00:00", "2026-12-06"),
        ("sun7", "2026-11-29T02:00:00+00:00", "2026-11-29"),
        ("sun7", "2026-12-06T02:00:00+00:00", "2026-12-06"),
        ("weekdays", "2026-11-25T02:00:00+00:00", "2026-11-25"),
        ("weekdays", "2026-11-26T02:00:00+00:00", "2026-11-26"),
    ]


def test_invalid_cron_is_a_config_error_naming_the_job(tmp_path: Path) -> None:
    for bad in ("0 2 * *", "61 2 * * *", "0 2 * * mon-", "every day"):
        cfg = _config(tmp_path, nightly={"schedule": bad})
        result = cli_run(cfg, "schedule", "--next", "1")
        assert result.exit_code == 2, (bad, result.output)
        assert "jobs.nightly.schedule" in result.output
        assert "Traceback" not in result.output


def test_seconds_field_only_with_the_test_switch(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "UTC", fast={"schedule": "*/5 * * * * *"})
    refused = cli_run(cfg, "schedule", "--next", "1")
    assert refused.exit_code == 2
    assert "has 6 fields; a cron schedule has 5" in refused.output
    allowed = cli_run(cfg, "schedule", "--next", "2", "--after", "2026-01-01T00:00:01", env=SECONDS_CRON)
    assert allowed.exit_code == 0, allowed.output
    assert [row[1] for row in _table(allowed.output)] == [
        "2026-01-01T00:00:05+00:00", "2026-01-01T00:00:10+00:00",
    ]


def test_schedule_without_scheduled_jobs_exits_2(tmp_path: Path) -> None:
    cfg = _config(tmp_path, manual={})
    for args in (["schedule"], ["schedule", "--next", "1"]):
        result = cli_run(cfg, *args)
        assert result.exit_code == 2
        assert "no job" in result.output and "schedule: key" in result.output


def test_catch_up_takes_only_the_latest_missed_fire_within_the_window(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"sqlite:///{tmp_path / 'x.db'}",
                        {"hourly": job(schedule="0 * * * *"),
                         "nightly": job(schedule="0 2 * * *", as_of="previous_day")},
                        timezone="Europe/Berlin", scheduler={"catch_up_hours": 3})
    cfg = load_config(path)
    engine = create_engine(cfg.database.url)
    try:
        from batch_scorer.storage.ddl import create_tool_tables

        create_tool_tables(engine)
        # 05:45 Berlin: the hourly job missed 03:00, 04:00 and 05:00 -> only 05:00 runs;
        # the nightly 02:00 fire is 3h45 ago, outside the 3h window.
        now = datetime(2026, 6, 10, 3, 45, tzinfo=UTC)
        fires = catch_up(cfg, engine, now=now)
        assert [(f.job, f.fire_time.isoformat(), str(f.as_of), f.kind) for f in fires] == [
            ("hourly", "2026-06-10T05:00:00+02:00", "2026-06-10", "catch-up"),
        ]
        # An hour earlier the nightly fire is inside the window; its as_of is the day before.
        fires = catch_up(cfg, engine, now=datetime(2026, 6, 10, 2, 45, tzinfo=UTC))
        assert [(f.job, str(f.as_of)) for f in fires] == [("hourly", "2026-06-10"), ("nightly", "2026-06-09")]
    finally:
        engine.dispose()


def test_a_fire_arriving_while_one_waits_is_coalesced_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    from batch_scorer.scheduling.fires import Fire, FireQueue

    fires = FireQueue()
    t0 = datetime(2026, 3, 30, 0, 0, tzinfo=UTC)
    for minutes in (0, 1, 2):
        fires.put(Fire("a", t0 + timedelta(minutes=minutes), t0.date()))
    fires.put(Fire("b", t0, t0.date()))
    got = [fires.get(timeout=0.1), fires.get(timeout=0.1), fires.get(timeout=0.1)]
    assert [(f.job, f.fire_time.minute) for f in got if f] == [("a", 2), ("b", 0)]
    assert sum("coalesced into the newer fire" in r.getMessage() for r in caplog.records) == 2


def test_day_of_month_and_day_of_week_both_restricted_fire_on_either(tmp_path: Path) -> None:
    # crontab(5): "13 * 5" is every 13th and every Friday; "*/2 * 1" (a field
    # starting with *) is both: odd days that are Mondays.
    cfg = _config(tmp_path, "UTC", either={"schedule": "0 2 13 * 5"}, both={"schedule": "0 2 */2 * 1"})
    result = cli_run(cfg, "schedule", "--next", "4", "--after", "2026-01-01T00:00")  # a Thursday
    assert result.exit_code == 0, result.output
    assert [(job, fire[:10]) for job, fire, _ in _table(result.output)] == [
        ("either", "2026-01-02"), ("either", "2026-01-09"), ("either", "2026-01-13"), ("either", "2026-01-16"),
        ("both", "2026-01-05"), ("both", "2026-01-19"), ("both", "2026-02-09"), ("both", "2026-02-23"),
    ]


def test_a_schedule_that_can_never_fire_is_a_config_error(tmp_path: Path) -> None:
    cfg = _config(tmp_path, nightly={"schedule": "0 0 30 2 *"})
    result = cli_run(cfg, "schedule", "--next", "1")
    assert result.exit_code == 2, result.output
    assert "jobs.nightly.schedule" in result.output and "never fire" in result.output


def test_hourly_schedule_fires_by_elapsed_time_through_the_spring_gap(tmp_path: Path) -> None:
    # 02:30 does not exist: its shifted instant is 03:30, which fires once.
    cfg = _config(tmp_path, hourly={"schedule": "30 * * * *"}, fixed={"schedule": "15,45 2 * * *"})
    result = cli_run(cfg, "schedule", "--next", "3", "--after", "2026-03-29T01:00")
    assert [row[:2] for row in _table(result.output)] == [
        ("hourly", "2026-03-29T01:30:00+01:00"), ("hourly", "2026-03-29T03:30:00+02:00"),
        ("hourly", "2026-03-29T04:30:00+02:00"),
        ("fixed", "2026-03-29T03:15:00+02:00"), ("fixed", "2026-03-29T03:45:00+02:00"),
        ("fixed", "2026-03-30T02:15:00+02:00"),
    ]


def test_a_range_of_hours_fires_at_both_occurrences_of_the_repeated_hour(tmp_path: Path) -> None:
    cfg = _config(tmp_path, window={"schedule": "0 1-3 * * *"}, listed={"schedule": "0 1,2,3 * * *"})
    result = cli_run(cfg, "schedule", "--next", "4", "--after", "2026-10-25T00:00")
    assert [row[:2] for row in _table(result.output)] == [
        ("window", "2026-10-25T01:00:00+02:00"), ("window", "2026-10-25T02:00:00+02:00"),
        ("window", "2026-10-25T02:00:00+01:00"), ("window", "2026-10-25T03:00:00+01:00"),
        ("listed", "2026-10-25T01:00:00+02:00"), ("listed", "2026-10-25T02:00:00+02:00"),
        ("listed", "2026-10-25T03:00:00+01:00"), ("listed", "2026-10-26T01:00:00+01:00"),
    ]


def test_trigger_gives_utc_instants_and_takes_the_seconds_field_as_a_parameter() -> None:
    from zoneinfo import ZoneInfo

    from batch_scorer.config.cron import cron_trigger, fires_between, latest_fire

    berlin = ZoneInfo("Europe/Berlin")
    with pytest.raises(ValueError, match="has 6 fields"):
        cron_trigger("*/20 30 * * * *", berlin)
    trigger = cron_trigger("*/20 30 * * * *", berlin, allow_seconds=True)
    # Across the repeated hour: local times of one zone compare by wall clock, so
    # the helpers must work on instants (02:30+01:00 is after 02:45+02:00).
    start = datetime(2026, 10, 25, 0, 0, tzinfo=UTC)  # 02:00+02:00
    fires = fires_between(trigger, start, start + timedelta(hours=2))
    assert [f.astimezone(berlin).isoformat() for f in fires] == [
        "2026-10-25T02:30:00+02:00", "2026-10-25T02:30:20+02:00", "2026-10-25T02:30:40+02:00",
        "2026-10-25T02:30:00+01:00", "2026-10-25T02:30:20+01:00", "2026-10-25T02:30:40+01:00",
    ]
    assert all(f.tzinfo is UTC for f in fires)
    now = datetime(2026, 10, 25, 2, 50, tzinfo=berlin, fold=1)  # 01:50 UTC
    assert latest_fire(trigger, now, timedelta(hours=1)) == datetime(2026, 10, 25, 1, 30, 40, tzinfo=UTC)
