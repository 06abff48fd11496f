"""The as_of day is cut in the configured time zone, on every kind of as_of column.

Rows every 10 minutes from the evening before to the morning after, plus the
instants one microsecond either side of both midnights, in three zones (one
with a half-hour offset), on a normal day and on both DST change days (23 and
25 hours). The truth is zoneinfo's: a row belongs to as_of if its instant's
local date there is as_of. On PostgreSQL the session runs in another zone
(UTC+14), so nothing may depend on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa

from batch_scorer.errors import EXIT_BAD_INPUT, UsageError
from batch_scorer.storage.db import create_engine
from batch_scorer.storage.sources.days import as_of_day
from batch_scorer.storage.sources.postgres_arrow import render_sql
from batch_scorer.storage.sources.spec import SourceSpec
from batch_scorer.storage.sources.sql import probe_columns, read_chunks, select_rows
from tests.helpers import AS_OF as AS_OF_DAY
from tests.helpers import cli_run, features_frame, job, load_table, save_model, train, write_config

CASES = [
    ("Europe/Berlin", date(2026, 3, 31)),
    ("Europe/Berlin", date(2026, 3, 29)),  # 23 hours
    ("Europe/Berlin", date(2026, 10, 25)),  # 25 hours
    ("America/New_York", date(2026, 3, 31)),
    ("America/New_York", date(2026, 3, 8)),
    ("America/New_York", date(2026, 11, 1)),
    ("Asia/Kolkata", date(2026, 3, 31)),  # +05:30, no DST
]
SESSION_ZONE = "Pacific/Kiritimati"


def _instants(zone: ZoneInfo, day: date) -> list[datetime]:
    start = datetime.combine(day - timedelta(days=1), time(20), zone).astimezone(UTC)
    grid = [start + timedelta(minutes=10 * i) for i in range(6 * 34)]
    edges = [datetime.combine(d, time(), zone).astimezone(UTC) for d in (day, day + timedelta(days=1))]
    tick = timedelta(microseconds=1)
    return sorted({*grid, *(e + s for e in edges for s in (-tick, timedelta(0), tick))})


def _text_forms(t: datetime, zone: ZoneInfo, i: int) -> str:
    """The SQLite text formats supported: offsets (+00:00, local, Z) and naive wall time."""
    local = t.astimezone(zone)
    return [
        t.isoformat(),
        local.isoformat(),
        t.replace(tzinfo=None).isoformat(sep=" ") + "Z",
        local.replace(tzinfo=None).isoformat(sep=" "),
    ][i % 4]


def _load(url: str, zone_name: str, day: date) -> set[int]:
    """The events table; returns the ids that belong to ``day``."""
    zone, pg = ZoneInfo(zone_name), url.startswith("postgresql")
    cols = [sa.Column("id", sa.Integer), sa.Column("d", sa.Date), sa.Column("wall", sa.DateTime)]
    cols.append(sa.Column("tz", sa.DateTime(timezone=True)) if pg else sa.Column("tz", sa.Text))
    table = sa.Table("events", sa.MetaData(), *cols, sa.Index("events_tz", "tz"))
    rows: list[dict[str, Any]] = []
    expected = set()
    for i, t in enumerate(_instants(zone, day)):
        local = t.astimezone(zone)
        rows.append({"id": i, "d": local.date(), "wall": local.replace(tzinfo=None),
                     "tz": t if pg else _text_forms(t, zone, i)})
        if local.date() == day:
            expected.add(i)
    engine = create_engine(url)
    try:
        table.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), rows)
    finally:
        engine.dispose()
    return expected


def _spec(column: str, zone: str) -> SourceSpec:
    return SourceSpec(job="j", key=("id",), table="events", as_of_column=column, timezone=zone)


def _read(engine: sa.Engine, spec: SourceSpec, day: date) -> set[int]:
    """Ids read by the streaming reader; the driver-bound statement must read the same."""
    with engine.connect() as conn:
        streamed = [int(v) for c in read_chunks(conn, spec, day, ["id"], 50) for v in c["id"]]
        bound = [r[0] for r in conn.execute(select_rows(conn, spec, day, ["id"]))]
    assert sorted(streamed) == sorted(bound)
    assert len(set(streamed)) == len(streamed)
    return set(streamed)


@pytest.fixture
def events(
    db_url: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[sa.Engine, set[int]]]:
    # libpq (psycopg and ADBC alike) sets the session's TimeZone from PGTZ.
    monkeypatch.setenv("PGTZ", SESSION_ZONE)
    zone, day = request.param
    expected = _load(db_url, zone, day)
    engine = create_engine(db_url)
    yield engine, expected
    engine.dispose()


@pytest.mark.parametrize("events", CASES, indirect=True, ids=[f"{z}-{d}" for z, d in CASES])
@pytest.mark.parametrize("column", ["tz", "wall", "d"])
def test_rows_belong_to_the_local_day_of_the_configured_zone(
    events: tuple[sa.Engine, set[int]], column: str, request: pytest.FixtureRequest
) -> None:
    """timestamptz (SQLite: text with offsets and naive), naive timestamp, date."""
    engine, expected = events
    zone, day = request.node.callspec.params["events"]
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            assert conn.execute(sa.text("SHOW TimeZone")).scalar() == SESSION_ZONE
    assert _read(engine, _spec(column, zone), day) == expected
    hours = (as_of_day("j", day, zone).end - as_of_day("j", day, zone).start) / timedelta(hours=1)
    assert hours in (23, 24, 25)


@pytest.mark.parametrize("events", [CASES[1]], indirect=True)
def test_the_day_filter_can_use_an_index_on_the_column(events: tuple[sa.Engine, set[int]]) -> None:
    engine, _ = events
    spec = _spec("tz", CASES[1][0])
    with engine.connect() as conn:
        stmt = select_rows(conn, spec, CASES[1][1], ["id"])
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SET enable_seqscan = off"))
            plan = "\n".join(r[0] for r in conn.execute(sa.text("EXPLAIN " + render_sql(stmt))))
            assert "events_tz" in plan and "Seq Scan" not in plan
        else:
            compiled = stmt.compile(conn, compile_kwargs={"literal_binds": True})
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}"))
            assert "USING INDEX events_tz" in plan


@pytest.mark.parametrize(("as_of", "zone"), [(date.max, "UTC"), (date.max, "America/New_York"),
                                             (date.min, "Asia/Kolkata")])
def test_a_day_without_computable_bounds_is_a_usage_error_naming_the_as_of(as_of: date, zone: str) -> None:
    with pytest.raises(UsageError, match=as_of.isoformat()) as err:
        as_of_day("j", as_of, zone)
    assert err.value.exit_code == EXIT_BAD_INPUT


def test_dates_held_as_text_are_read_by_their_date(db_url: str) -> None:
    frame = pd.concat([features_frame(4), features_frame(3, as_of=date(2026, 4, 1))], ignore_index=True)
    frame["snapshot_date"] = [d.isoformat() + (" 23:59:59" if i % 2 else "") for i, d in enumerate(frame.snapshot_date)]
    load_table(db_url, frame, snapshot_date=sa.Text())
    spec = SourceSpec(job="j", key=("entity_id",), table="features", as_of_column="snapshot_date")
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            assert sum(len(c) for c in read_chunks(conn, spec, AS_OF_DAY, ["entity_id"], 10)) == 4
    finally:
        engine.dispose()


def test_the_last_day_with_a_next_day_still_reads(db_url: str) -> None:
    load_table(db_url, features_frame(5, as_of=date(9999, 12, 30)))
    engine = create_engine(db_url)
    spec = SourceSpec(job="j", key=("entity_id",), table="features", as_of_column="snapshot_date")
    try:
        with engine.connect() as conn:
            probe_columns(conn, spec, date(9999, 12, 30))
            rows = [len(c) for c in read_chunks(conn, spec, date(9999, 12, 30), ["entity_id"], 10)]
    finally:
        engine.dispose()
    assert rows == [5]


def test_run_for_the_last_date_exits_2_before_recording_anything(db_url: str, tmp_path: Path) -> None:
    load_table(db_url, features_frame(20))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    config = write_config(tmp_path, db_url, {"j": job()})
    result = cli_run(config, "run", "j", "--as-of", "9999-12-31")
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert "9999-12-31" in result.output and "Traceback" not in result.output
    engine = create_engine(db_url)
    try:
        if sa.inspect(engine).has_table("scoring_runs"):
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT count(*) FROM scoring_runs")).scalar() == 0
    finally:
        engine.dispose()
