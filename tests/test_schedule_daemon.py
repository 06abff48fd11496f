"""The ``batch-scorer schedule`` daemon as a real process: per-second fires, catch-up
after downtime, two daemons on one PostgreSQL database, SIGTERM mid-run."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.faults_support import Run
from tests.helpers import query
from tests.schedule_support import count_lines, daemon, scheduled_job, stop, wait_count

FIRE_OK = ": succeeded, run "
ROWS = 20_000
PROGRESS = re.compile(r"job j run \d+: [1-9]\d* rows read")  # a run has scored some rows


def test_daemon_runs_each_fire_with_trigger_schedule_and_stops_on_sigterm(tmp_path: Path, sqlite_url: str) -> None:
    cfg = scheduled_job(tmp_path, sqlite_url, "* * * * * *")
    run = daemon(cfg)
    wait_count(run, FIRE_OK, 2)
    assert stop(run) == 0, run.stderr

    assert "Traceback" not in run.stderr
    runs = query(sqlite_url, "SELECT trigger, status, as_of FROM scoring_runs ORDER BY run_id")
    assert len(runs) >= 2
    assert {r[0] for r in runs} == {"schedule"}
    assert {r[1] for r in runs} == {"succeeded"}
    # as_of: the fire time's date in the configured timezone (UTC here).
    fire_days = {str(datetime.fromisoformat(m).date()) for m in re.findall(r"fire (\S+) \(", run.stderr)}
    assert {str(r[2]) for r in runs} <= fire_days
    # Every fire logged one line.
    assert count_lines(run, FIRE_OK) == len(runs)
    # Re-scoring the same as_of replaced the rows: one row per entity.
    assert query(sqlite_url, "SELECT count(*), count(DISTINCT entity_id) FROM predictions") == [(200, 200)]


def test_catch_up_runs_missed_fire_once_and_not_again_after_restart(tmp_path: Path, sqlite_url: str) -> None:
    # A daily fire at 03:00 UTC: the daemon was "down" at the last one (the ledger
    # has no run for it) and the catch-up window covers it.
    cfg = scheduled_job(tmp_path, sqlite_url, "0 3 * * *", scheduler={"catch_up_hours": 48})
    now = datetime.now(UTC)
    last_fire = now.replace(hour=3, minute=0, second=0, microsecond=0)
    if last_fire > now:
        last_fire -= timedelta(days=1)

    first = daemon(cfg)
    wait_count(first, FIRE_OK, 1)
    assert stop(first) == 0, first.stderr
    assert f"last fire {last_fire.isoformat()} (as_of {last_fire.date()}) has no succeeded run" in first.stderr
    assert "(catch-up)" in first.stderr

    second = daemon(cfg)
    second.wait_for(lambda ln: "scheduler started" in ln, timeout=20)
    time.sleep(0.5)
    assert stop(second) == 0, second.stderr
    assert "nothing to catch up" in second.stderr
    assert FIRE_OK not in second.stderr

    assert query(sqlite_url, "SELECT trigger, status, as_of FROM scoring_runs") == [
        ("schedule", "succeeded", str(last_fire.date())),
    ]


def test_two_daemons_on_one_postgres_database_score_each_fire_once(tmp_path: Path, pg_url: str) -> None:
    cfg = scheduled_job(tmp_path, pg_url, "*/2 * * * * *")
    a, b = daemon(cfg), daemon(cfg)
    try:
        wait_count(a, "scheduler started", 1)
        wait_count(b, "scheduler started", 1)
        started = time.monotonic()
        while time.monotonic() - started < 5:
            time.sleep(0.2)
    finally:
        codes = stop(a), stop(b)
    assert codes == (0, 0), a.stderr + b.stderr

    # Each run belongs to the fire it started after (fires every 2 s): at most one
    # succeeded run per fire, across both daemons.
    per_fire = query(pg_url, """
        SELECT floor(extract(epoch FROM started_at) / 2) AS fire, count(*)
        FROM scoring_runs WHERE status = 'succeeded' GROUP BY 1 HAVING count(*) > 1""")
    assert per_fire == [], per_fire
    [(succeeded, total, triggers)] = query(
        pg_url, "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*), "
                "string_agg(DISTINCT trigger, ',') FROM scoring_runs")
    assert succeeded == total >= 2
    assert triggers == "schedule"
    # Both daemons saw every fire; each fire that one scored, the other skipped.
    fires_a = count_lines(a, "(schedule) as_of")
    fires_b = count_lines(b, "(schedule) as_of")
    skipped = count_lines(a, "skipped") + count_lines(b, "skipped")
    assert count_lines(a, FIRE_OK) + count_lines(b, FIRE_OK) == succeeded
    assert skipped >= min(fires_a, fires_b) - 1 > 0
    assert query(pg_url, "SELECT count(*), count(DISTINCT entity_id) FROM predictions") == [(200, 200)]


def _start_big_run(tmp_path: Path, url: str, stop_timeout: int) -> Run:
    cfg = scheduled_job(tmp_path, url, "* * * * * *", rows=ROWS, kind="forest", chunk_size=1_000,
                        scheduler={"catch_up_hours": 0, "stop_timeout_seconds": stop_timeout})
    run = daemon(cfg)
    run.wait_for(lambda ln: PROGRESS.search(ln) is not None, timeout=30)
    assert run.proc.poll() is None
    return run


def test_sigterm_mid_run_rolls_back_leaves_nothing_partial_and_exits_0(tmp_path: Path, db_url: str) -> None:
    run = _start_big_run(tmp_path, db_url, stop_timeout=0)
    sent = time.monotonic()
    assert stop(run) == 0, run.stderr
    assert time.monotonic() - sent < 10
    assert "Traceback" not in run.stderr
    [(status, error)] = query(db_url, "SELECT status, error FROM scoring_runs")
    assert status == "failed" and "interrupted by SIGTERM" in error
    assert query(db_url, "SELECT count(*) FROM predictions") == [(0,)]


def test_runs_never_overlap_and_sigterm_lets_the_current_run_finish(tmp_path: Path, sqlite_url: str) -> None:
    # Runs take about a second and the job fires every second: fires come while
    # a run is going; they wait (see test_schedule_times for the coalescing).
    run = _start_big_run(tmp_path, sqlite_url, stop_timeout=60)
    wait_count(run, FIRE_OK, 2, timeout=30)
    seen = len(run.lines)
    run.wait_for(lambda ln: run.lines.index(ln) >= seen and PROGRESS.search(ln) is not None)
    assert stop(run) == 0, run.stderr
    assert "taking no new fires" in run.stderr
    runs = query(sqlite_url, "SELECT status, started_at, finished_at FROM scoring_runs ORDER BY run_id")
    # The run in flight at the signal was allowed to finish: all succeeded, and
    # each run started after the one before it had finished.
    assert {r[0] for r in runs} == {"succeeded"} and len(runs) >= 3
    for before, after in zip(runs, runs[1:], strict=False):
        assert after[1] >= before[2]
    assert query(sqlite_url, "SELECT count(*), max(run_id) FROM predictions") == [(ROWS, len(runs))]
