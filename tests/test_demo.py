"""`batch-scorer demo` works on a fresh copy of the repo's config, twice."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.helpers import cli_run, query

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_twice_on_sqlite_from_the_repo_config(tmp_path: Path, monkeypatch) -> None:
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    shutil.copytree(ROOT / "sql", tmp_path / "sql")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for _ in range(2):
        result = cli_run(tmp_path / "config.yaml", "demo")
        assert result.exit_code == 0, result.output
        assert "predictions_latest" in result.output
    db = f"sqlite:///{tmp_path / 'data' / 'demo.db'}"
    assert query(db, "SELECT count(*) FROM customer_features") == [(120_000,)]
    assert query(db, "SELECT job, count(*), count(DISTINCT customer_id) FROM predictions GROUP BY job") == [
        ("churn", 40_000, 40_000)
    ]
    assert query(db, "SELECT count(*) FROM ltv_predictions_latest") == [(40_000,)]
    assert query(db, "SELECT status, count(*) FROM scoring_runs GROUP BY status") == [("succeeded", 4)]
    assert (tmp_path / "models" / "churn.joblib").exists()
