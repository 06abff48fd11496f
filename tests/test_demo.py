"""`batch-scorer demo` scores a small fleet from a fresh copy of the repo's config, twice:
two models over five countries (a matrix) and one job that reads their output (after:)."""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path

from batch_scorer.dates import today
from tests.helpers import cli_run, query

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_a_fleet_twice_on_sqlite_from_the_repo_config(tmp_path: Path, monkeypatch) -> None:
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    shutil.copytree(ROOT / "sql", tmp_path / "sql")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for _ in range(2):
        result = cli_run(tmp_path / "config.yaml", "demo")
        assert result.exit_code == 0, result.output
        assert "job        as_of       status" in result.output  # the summary table
        assert result.output.count(" succeeded ") == 11
    db = f"sqlite:///{tmp_path / 'data' / 'demo.db'}"
    day = today("UTC")
    assert query(db, "SELECT count(*), count(DISTINCT snapshot_date), max(snapshot_date) FROM customer_features") == [
        (140_000, 7, day.isoformat())
    ]
    per_job = query(db, "SELECT job, count(*), count(DISTINCT country) FROM predictions GROUP BY job ORDER BY job")
    assert [j for j, _, _ in per_job] == ["churn.DE", "churn.ES", "churn.FR", "churn.IT", "churn.NL"]
    assert all(countries == 1 for _, _, countries in per_job)  # each expansion read only its country
    assert sum(n for _, n, _ in per_job) == 20_000
    assert query(db, "SELECT count(*) FROM ltv_predictions_latest") == [(20_000,)]
    assert query(db, "SELECT count(*) FROM retention_priority_latest") == [(20_000,)]
    # The second demo re-scored each job: one set per job and as_of, both runs in the ledger.
    assert query(db, "SELECT status, count(*), count(DISTINCT job) FROM scoring_runs GROUP BY status") == [
        ("succeeded", 22, 11)
    ]
    assert (tmp_path / "models" / "churn_DE.joblib").exists()
    assert f"backfill churn --start {day - timedelta(days=6)} --end {day}" in result.output


def test_the_demos_next_steps_work_as_printed(tmp_path: Path, monkeypatch) -> None:
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    shutil.copytree(ROOT / "sql", tmp_path / "sql")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert cli_run(tmp_path / "config.yaml", "demo").exit_code == 0
    cfg = tmp_path / "config.yaml"
    day = today("UTC")
    assert cli_run(cfg, "run", "churn.DE").exit_code == 0
    backfill = cli_run(cfg, "backfill", "churn", "--start", str(day - timedelta(days=6)), "--end", str(day))
    assert backfill.exit_code == 0, backfill.output
    assert "30 succeeded, 5 skipped (already succeeded), 0 failed" in backfill.output
    assert isinstance(day, date)
