"""Selecting jobs beyond ``run``: ``backfill`` takes several jobs or ``--all`` and runs each
date's jobs in ``after:`` order (a downstream job reads what its upstream published that
date); ``validate``, ``jobs`` and ``schedule --next`` take ``--all``; a ``--fail-fast``
summary counts every job-date it was given."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd

from tests.fleet_support import COUNTRIES, country_frame, matrix_job, per_country_models
from tests.helpers import cli_run, load_table, query, save_model, train, write_config
from tests.schedule_support import START

DAYS = [START + timedelta(days=i) for i in range(3)]
RANGE = ["--start", str(DAYS[0]), "--end", str(DAYS[-1])]
DOWNSTREAM_SQL = """
SELECT f.entity_id, f.x1, f.x2, f.x3, f.color, f.region
FROM features f JOIN predictions p ON p.entity_id = f.entity_id AND p.as_of = f.snapshot_date
WHERE f.snapshot_date = :as_of AND p.job LIKE 'm.%'
"""


def _chain(tmp_path: Path, url: str, rows: int = 40, bad_day: int | None = None) -> Path:
    """Matrix job ``m`` (one per country) and ``agg``, after ``m``, reading m's output of each
    date; ``bad_day``: that date's BE rows include NULL keys, which fail m.BE (no rejected
    row is allowed)."""
    frames = []
    for i, day in enumerate(DAYS):
        frame = country_frame(rows, seed=10 * i)
        frame["snapshot_date"] = day
        if i == bad_day:
            frame["entity_id"] = frame["entity_id"].astype("Int64")
            frame.loc[frame.index[frame["country"] == "BE"][:3], "entity_id"] = pd.NA
        frames.append(frame)
    load_table(url, pd.concat(frames, ignore_index=True))
    per_country_models(tmp_path)
    save_model(train("binary"), tmp_path / "models" / "agg.joblib")
    (tmp_path / "downstream.sql").write_text(DOWNSTREAM_SQL)
    jobs = {"m": matrix_job(max_rejected_fraction=0),
            "agg": {"model": {"path": "models/agg.joblib"}, "after": ["m"],
                    "source": {"query": "downstream.sql", "key": ["entity_id"]},
                    "output": {"table": "agg_out"}}}
    return write_config(tmp_path, url, jobs, defaults={"parallel_jobs": 4})


def test_backfill_of_several_jobs_runs_each_date_in_after_order(tmp_path: Path, db_url: str) -> None:
    cfg = _chain(tmp_path, db_url)
    result = cli_run(cfg, "backfill", "agg", "m", *RANGE)
    assert result.exit_code == 0, result.output
    n = len(COUNTRIES) * 40
    # agg saw every upstream row of each date: m had published them all before it read.
    per_day = query(db_url, "SELECT as_of, count(*) FROM agg_out GROUP BY as_of ORDER BY as_of")
    assert [(str(a), c) for a, c in per_day] == [(str(d), n) for d in DAYS]
    runs = query(db_url, "SELECT job, as_of, status, started_at, finished_at FROM scoring_runs")
    assert len(runs) == 3 * (len(COUNTRIES) + 1) and {r[2] for r in runs} == {"succeeded"}
    for day in DAYS:
        mine = [r for r in runs if str(r[1]) == str(day)]
        agg = next(r for r in mine if r[0] == "agg")
        assert all(str(r[4]) <= str(agg[3]) for r in mine if r[0] != "agg"), (day, mine)
    assert f"{3 * (len(COUNTRIES) + 1)} job-date(s): {3 * (len(COUNTRIES) + 1)} succeeded" in result.output
    # --all backfills the same jobs: every date is done already.
    again = cli_run(cfg, "backfill", "--all", *RANGE)
    assert again.exit_code == 0, again.output
    assert f"0 succeeded, {3 * (len(COUNTRIES) + 1)} skipped (already succeeded)" in again.output


def test_a_fail_fast_summary_counts_every_job_date_it_was_given(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _chain(tmp_path, sqlite_url, bad_day=1)
    result = cli_run(cfg, "backfill", "m", "agg", *RANGE, "--fail-fast")
    assert result.exit_code == 1, result.output
    per_day = len(COUNTRIES) + 1
    # Day 1 done; day 2: m.BE failed, agg skipped (its upstream failed); day 3 not attempted.
    assert (f"backfill m, agg: {3 * per_day} job-date(s): {per_day + len(COUNTRIES) - 1} succeeded, "
            f"0 skipped (already succeeded), 2 failed, 0 skipped (another run held the lock), "
            f"{per_day} not attempted") in result.output


def test_validate_jobs_and_schedule_next_take_all(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _chain(tmp_path, sqlite_url)
    expanded = [f"m.{c}" for c in COUNTRIES] + ["agg"]
    checked = cli_run(cfg, "validate", "--all")
    assert checked.exit_code == 0, checked.output
    assert all(f"{name}: ok" in checked.output for name in expanded), checked.output
    listed = cli_run(cfg, "jobs", "--all")
    assert listed.exit_code == 0 and all(name in listed.output for name in expanded), listed.output
    nothing = cli_run(cfg, "schedule", "--all", "--next", "1")  # no job has a schedule
    assert nothing.exit_code != 0 or "job" in nothing.output
    both = cli_run(cfg, "validate", "--all", "m")
    assert both.exit_code == 2 and "not both" in both.output
