"""``batch-scorer backfill``: a range of as_of dates, each committed on its own; reruns
skip or replace; a SIGKILL in the middle and the same command again finishes the
range without duplicates; bad ranges exit 2."""

from __future__ import annotations

import signal
from datetime import timedelta
from pathlib import Path

from tests.faults_support import Run
from tests.helpers import cli_run, query, write_config
from tests.schedule_support import START, dated_job, wait_count

DAYS = [START + timedelta(days=i) for i in range(10)]
RANGE = ["--start", "2026-01-01", "--end", "2026-01-10"]


def _per_day(url: str) -> list[tuple[str, int, int]]:
    rows = query(url, "SELECT as_of, count(*), count(DISTINCT entity_id) FROM predictions "
                      "GROUP BY as_of ORDER BY as_of")
    return [(str(d), n, k) for d, n, k in rows]


def _expected(rows: int) -> list[tuple[str, int, int]]:
    return [(str(d), rows, rows) for d in DAYS]


def test_backfill_scores_each_date_of_a_ten_day_range_once(tmp_path: Path, db_url: str) -> None:
    cfg = dated_job(tmp_path, db_url)
    result = cli_run(cfg, "backfill", "j", *RANGE)
    assert result.exit_code == 0, result.output
    assert _per_day(db_url) == _expected(100)
    runs = query(db_url, "SELECT as_of, trigger, status FROM scoring_runs ORDER BY as_of")
    assert [(str(d), t, s) for d, t, s in runs] == [(str(d), "backfill", "succeeded") for d in DAYS]
    # Summary table: one line per date with status, rows and seconds.
    assert "as_of       status     rows  seconds  run_id" in result.output
    assert result.output.count(" succeeded  100 ") == 10
    assert "10 date(s): 10 succeeded, 0 skipped (already succeeded), 0 failed" in result.output


def test_backfill_again_skips_dates_already_succeeded(tmp_path: Path, sqlite_url: str) -> None:
    cfg = dated_job(tmp_path, sqlite_url)
    assert cli_run(cfg, "backfill", "j", "--start", "2026-01-03", "--end", "2026-01-05").exit_code == 0
    result = cli_run(cfg, "backfill", "j", *RANGE)
    assert result.exit_code == 0, result.output
    assert "10 date(s): 7 succeeded, 3 skipped (already succeeded), 0 failed" in result.output
    assert result.output.count("skipped (done)") == 3
    assert query(sqlite_url, "SELECT count(*) FROM scoring_runs") == [(10,)]
    again = cli_run(cfg, "backfill", "j", *RANGE)
    assert again.exit_code == 0
    assert "0 succeeded, 10 skipped" in again.output
    assert query(sqlite_url, "SELECT count(*) FROM scoring_runs") == [(10,)]
    assert _per_day(sqlite_url) == _expected(100)


def test_backfill_rerun_replaces_the_rows_of_every_date(tmp_path: Path, db_url: str) -> None:
    cfg = dated_job(tmp_path, db_url)
    assert cli_run(cfg, "backfill", "j", *RANGE).exit_code == 0
    result = cli_run(cfg, "backfill", "j", *RANGE, "--rerun")
    assert result.exit_code == 0, result.output
    assert "10 succeeded, 0 skipped" in result.output
    assert _per_day(db_url) == _expected(100)
    # Every visible row comes from the second pass (runs 11..20).
    assert query(db_url, "SELECT min(run_id), max(run_id), count(DISTINCT run_id) FROM predictions") == [
        (11, 20, 10)
    ]
    assert query(db_url, "SELECT count(*) FROM scoring_runs WHERE status = 'succeeded'") == [(20,)]


def test_backfill_reports_a_failed_date_and_continues_unless_fail_fast(tmp_path: Path, sqlite_url: str) -> None:
    cfg = dated_job(tmp_path, sqlite_url, days=3)
    # 2026-01-04 has no rows: that run fails (empty source), the others succeed.
    result = cli_run(cfg, "backfill", "j", "--start", "2026-01-02", "--end", "2026-01-05")
    assert result.exit_code == 1, result.output
    assert "4 date(s): 2 succeeded, 0 skipped (already succeeded), 2 failed" in result.output
    assert "Error: as_of 2026-01-04:" in result.output and "no rows" in result.output
    statuses = query(sqlite_url, "SELECT as_of, status FROM scoring_runs ORDER BY run_id")
    assert [(str(d), s) for d, s in statuses] == [
        ("2026-01-02", "succeeded"), ("2026-01-03", "succeeded"),
        ("2026-01-04", "failed"), ("2026-01-05", "failed"),
    ]
    # The summary names each date's run, the failed ones' too (their ledger rows).
    table = {line.split()[0]: line.split() for line in result.output.splitlines() if line.startswith("2026-01-0")}
    ledger_ids = dict(query(sqlite_url, "SELECT as_of, run_id FROM scoring_runs"))
    assert {day: int(cols[-1]) for day, cols in table.items()} == {str(d): r for d, r in ledger_ids.items()}
    stopped = cli_run(cfg, "backfill", "j", "--start", "2026-01-04", "--end", "2026-01-05", "--fail-fast")
    assert stopped.exit_code == 1
    assert "2 date(s): 0 succeeded" in stopped.output and "1 not attempted" in stopped.output


def test_backfill_killed_midway_then_resumed_finishes_without_duplicates(tmp_path: Path, db_url: str) -> None:
    cfg = dated_job(tmp_path, db_url, rows=3_000, chunk_size=500)
    first = Run(cfg, "backfill", "j", *RANGE)
    # Three dates published, the fourth under way: kill -9.
    wait_count(first, ": succeeded, run ", 3, timeout=60)
    first.wait_for(lambda ln: " rows read, " in ln, timeout=30)
    first.proc.send_signal(signal.SIGKILL)
    assert first.finish(timeout=10) == -signal.SIGKILL

    done = query(db_url, "SELECT count(*) FROM scoring_runs WHERE status = 'succeeded'")[0][0]
    assert 3 <= done < 10
    second = Run(cfg, "backfill", "j", *RANGE)
    assert second.finish(timeout=120) == 0, second.stderr
    assert f"{done} already succeeded" in second.stderr

    # Every date exactly once, no duplicates, nothing missing.
    assert _per_day(db_url) == _expected(3_000)
    assert query(db_url, "SELECT count(*), count(DISTINCT as_of) FROM scoring_runs WHERE status = 'succeeded'") == [
        (10, 10)
    ]
    # The killed run's row was found stale by the resumed backfill.
    statuses = {s for (s,) in query(db_url, "SELECT status FROM scoring_runs")}
    assert statuses <= {"succeeded", "abandoned"}
    assert query(db_url, "SELECT count(*) FROM scoring_runs WHERE status = 'running'") == [(0,)]


def test_backfill_invalid_ranges_exit_2_with_a_clear_message(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path / 'x.db'}",
                       {"j": {"model": {"path": "m.joblib"}, "source": {"table": "t", "key": ["k"]}}})
    cases = {
        ("--start", "2026-01-10", "--end", "2026-01-01"): "--end 2026-01-01 is before --start 2026-01-10",
        ("--start", "2026-02-30", "--end", "2026-03-01"): "--start '2026-02-30' is not a valid date",
        ("--start", "2026-01-01", "--end", "tomorrow"): "--end 'tomorrow' is not a valid date",
    }
    for args, message in cases.items():
        result = cli_run(cfg, "backfill", "j", *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output
        assert "Traceback" not in result.output
    unknown = cli_run(cfg, "backfill", "nope", "--start", "2026-01-01", "--end", "2026-01-02")
    assert unknown.exit_code == 2 and "unknown job 'nope'" in unknown.output
    assert not (tmp_path / "x.db").exists() or query(f"sqlite:///{tmp_path / 'x.db'}",
                                                     "SELECT count(*) FROM sqlite_master") == [(0,)]
