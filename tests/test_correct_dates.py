"""An as_of is one calendar date, whatever type it is given as, and one typo cannot hide
every later run: future dates are refused unless allowed, and a run can be retracted."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from batch_scorer import api
from batch_scorer.dates import today
from batch_scorer.errors import UsageError
from tests.helpers import (
    cli_run,
    features_frame,
    job,
    load_table,
    published,
    query,
    save_model,
    train,
    write_config,
)

DAYS = [date(2026, 1, 2), date(2026, 1, 3), date(2026, 1, 4)]
BERLIN = "Europe/Berlin"


def _dated(tmp_path: Path, url: str, days: list[date] = DAYS, tz: str = BERLIN, rows: int = 40) -> Path:
    load_table(url, pd.concat([features_frame(rows, seed=i, as_of=d) for i, d in enumerate(days)]))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    return write_config(tmp_path, url, {"j": job()}, timezone=tz)


def _sets(url: str) -> list[tuple[str, int]]:
    """(as_of, rows) per as_of published: one set each, no duplicates."""
    rows = query(url, "SELECT CAST(as_of AS TEXT), count(*), count(DISTINCT entity_id) FROM predictions "
                      "GROUP BY 1 ORDER BY 1")
    assert all(n == distinct for _, n, distinct in rows), rows
    return [(str(d)[:10], n) for d, n, _ in rows]


@pytest.mark.parametrize("given", [
    "2026-01-03",
    date(2026, 1, 3),
    datetime(2026, 1, 3, 9, 0),  # what datetime.now() gives: naive, read as wall time
    datetime(2026, 1, 3, 0, 30, tzinfo=ZoneInfo(BERLIN)),
    pd.Timestamp("2026-01-03", tz=BERLIN),  # was: labelled 2026-01-03, recorded 2026-01-02
    pd.Timestamp("2026-01-02T23:30:00Z"),  # 00:30 in Berlin
    np.datetime64("2026-01-03T12:00"),
    "2026-01-03T12:00:00+01:00",
], ids=lambda v: type(v).__name__ + ":" + str(v))
def test_every_date_type_through_run_is_one_as_of_and_never_deletes_another_day(
    tmp_path: Path, db_url: str, given: object
) -> None:
    cfg = _dated(tmp_path, db_url)
    api.run(cfg, ["j"], as_of=DAYS[0], check=True)
    for _ in range(2):  # twice: a re-run replaces, never duplicates
        [result] = api.run(cfg, ["j"], as_of=given, check=True)
        assert result.as_of == DAYS[1]
    assert _sets(db_url) == [("2026-01-02", 40), ("2026-01-03", 40)]
    ledger = query(db_url, "SELECT CAST(as_of AS TEXT) FROM scoring_runs ORDER BY run_id")
    assert [str(d)[:10] for (d,) in ledger] == ["2026-01-02", "2026-01-03", "2026-01-03"]


def test_backfill_with_datetimes_and_timestamps_scores_each_date_once(tmp_path: Path, db_url: str) -> None:
    cfg = _dated(tmp_path, db_url)
    starts = [datetime(2026, 1, 2, 8, 0), pd.date_range("2026-01-02", periods=3)[0], "2026-01-02"]
    ends = [datetime(2026, 1, 4, 23, 0), pd.date_range("2026-01-02", periods=3)[-1], date(2026, 1, 4)]
    first = api.backfill(cfg, "j", starts[0], ends[0])
    assert [r.status for r in first] == ["succeeded"] * 3
    for start, end in zip(starts[1:], ends[1:], strict=True):
        again = api.backfill(cfg, "j", start, end)
        assert [r.status for r in again] == ["already_done"] * 3  # seen as done, whatever the type
    assert _sets(db_url) == [(d.isoformat(), 40) for d in DAYS]


@pytest.mark.parametrize("bad", ["2026-02-30", "yesterday", 20260103, 3.5, object(), pd.NaT, np.datetime64("NaT")])
def test_anything_that_is_not_a_date_is_a_usage_error_before_anything_is_written(
    tmp_path: Path, sqlite_url: str, bad: object
) -> None:
    cfg = _dated(tmp_path, sqlite_url)
    with pytest.raises(UsageError, match="as_of"):
        api.run(cfg, ["j"], as_of=bad)
    assert query(sqlite_url, "SELECT count(*) FROM sqlite_master WHERE name = 'scoring_runs'") == [(0,)]


def test_the_cli_rejects_an_impossible_date_with_exit_2(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _dated(tmp_path, sqlite_url)
    result = cli_run(cfg, "run", "j", "--as-of", "2026-02-30")
    assert result.exit_code == 2 and "YYYY-MM-DD" in result.output


def test_a_future_as_of_is_refused_unless_allowed(tmp_path: Path, db_url: str) -> None:
    cfg = _dated(tmp_path, db_url, days=[date(9999, 12, 30)])
    refused = cli_run(cfg, "run", "j", "--as-of", "9999-12-30")
    assert refused.exit_code == 2 and "--allow-future" in refused.output
    assert published(db_url).empty
    allowed = cli_run(cfg, "run", "j", "--as-of", "9999-12-30", "--allow-future")
    assert allowed.exit_code == 0, allowed.output
    assert _sets(db_url) == [("9999-12-30", 40)]


def test_tomorrow_is_within_the_documented_margin(tmp_path: Path, sqlite_url: str) -> None:
    tomorrow = today(BERLIN) + timedelta(days=1)
    cfg = _dated(tmp_path, sqlite_url, days=[tomorrow])
    assert cli_run(cfg, "run", "j", "--as-of", tomorrow.isoformat()).exit_code == 0


def test_an_as_of_beyond_the_calendar_is_exit_2_with_no_ledger_row(tmp_path: Path, db_url: str) -> None:
    cfg = _dated(tmp_path, db_url)
    api.run(cfg, ["j"], as_of=DAYS[0], check=True)
    result = cli_run(cfg, "run", "j", "--as-of", "9999-12-31", "--allow-future")
    assert result.exit_code == 2, result.output
    assert "9999-12-31" in result.output and "Traceback" not in result.output
    assert query(db_url, "SELECT count(*) FROM scoring_runs WHERE status = 'failed'") == [(0,)]


def test_retract_takes_a_typo_back_and_latest_shows_what_was_there_before(tmp_path: Path, db_url: str) -> None:
    typo = date(2026, 3, 1)
    cfg = _dated(tmp_path, db_url, days=[*DAYS, typo])
    api.run(cfg, ["j"], as_of=DAYS[-1], check=True)
    [bad] = api.run(cfg, ["j"], as_of=typo, check=True)
    assert {str(d)[:10] for (d,) in query(db_url, "SELECT as_of FROM predictions_latest")} == {"2026-03-01"}

    result = cli_run(cfg, "retract", str(bad.run_id), "--note", "as_of typo")
    assert result.exit_code == 0, result.output
    assert "40 rows removed" in result.output
    assert {str(d)[:10] for (d,) in query(db_url, "SELECT as_of FROM predictions_latest")} == {"2026-01-04"}
    assert query(db_url, "SELECT status, error FROM scoring_runs WHERE run_id = :r", r=bad.run_id) == [
        ("retracted", "retracted: as_of typo")]
    again = cli_run(cfg, "retract", str(bad.run_id))
    assert again.exit_code == 2 and "retracted" in again.output
    assert cli_run(cfg, "retract", "99999").exit_code == 2
