"""PostgreSQL: a write blocked by another session's open transaction (a notebook that
updated the predictions and never committed, a psql session holding a table lock) fails
after ``database.busy_timeout_seconds`` with advice, instead of waiting for ever, and
leaves what was published as it was."""

from __future__ import annotations

import time
from pathlib import Path

import sqlalchemy as sa

from batch_scorer import api
from batch_scorer.storage.db import create_engine
from tests.helpers import AS_OF, OTHER_AS_OF, features_frame, job, load_table, query, save_model, train, write_config


def _setup(tmp_path: Path, url: str) -> Path:
    load_table(url, features_frame(300, seed=2, as_of=AS_OF))
    load_table(url, features_frame(300, seed=3, as_of=OTHER_AS_OF))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, url, {"j": job()})
    text = cfg.read_text().replace("database:\n", "database:\n  busy_timeout_seconds: 1\n", 1)
    cfg.write_text(text)
    return cfg


def _blocked_run(cfg: Path, as_of: str) -> tuple[api.RunResult, float]:
    started = time.monotonic()
    (result,) = api.run(str(cfg), ["j"], as_of=as_of)
    return result, time.monotonic() - started


def test_a_notebooks_open_update_of_the_rows_a_rerun_replaces_fails_the_rerun_after_the_timeout(
    tmp_path: Path, pg_url: str
) -> None:
    cfg = _setup(tmp_path, pg_url)
    (first,) = api.run(str(cfg), ["j"], as_of=AS_OF.isoformat())
    assert first.status == "succeeded"
    notebook = create_engine(pg_url)
    try:
        with notebook.connect() as conn:
            conn.execute(sa.text("UPDATE predictions SET score = score WHERE entity_id < 5"))  # never committed
            result, took = _blocked_run(cfg, AS_OF.isoformat())
            assert result.status == "failed" and result.exit_code == 1
            assert "another session holds a lock" in (result.error or "")
            assert "pg_stat_activity" in (result.error or "") and took < 20
            conn.rollback()
        assert query(pg_url, "SELECT DISTINCT run_id, count(*) FROM predictions GROUP BY run_id") == [
            (first.run_id, 300)]
        [(status, error)] = query(pg_url, "SELECT status, error FROM scoring_runs WHERE run_id = :r",
                                  r=result.run_id)
        assert status == "failed" and "lock" in error
        (again,) = api.run(str(cfg), ["j"], as_of=AS_OF.isoformat())  # the notebook let go: it runs
        assert again.status == "succeeded" and again.rows_published == 300
    finally:
        notebook.dispose()


def test_a_table_lock_held_by_psql_fails_a_new_as_of_after_the_timeout_and_nothing_is_published(
    tmp_path: Path, pg_url: str
) -> None:
    cfg = _setup(tmp_path, pg_url)
    (first,) = api.run(str(cfg), ["j"], as_of=AS_OF.isoformat())
    other = create_engine(pg_url)
    try:
        with other.connect() as conn:
            conn.execute(sa.text("LOCK TABLE predictions IN EXCLUSIVE MODE"))
            result, took = _blocked_run(cfg, OTHER_AS_OF.isoformat())
            conn.rollback()
    finally:
        other.dispose()
    assert result.status == "failed" and result.exit_code == 1 and took < 20, result.error
    assert query(pg_url, "SELECT run_id, count(*) FROM predictions GROUP BY run_id") == [(first.run_id, 300)]
