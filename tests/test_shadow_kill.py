"""A run scoring a champion and a challenger, killed with SIGKILL while it writes, leaves
neither champion nor shadow rows: both tables are published in one transaction or not at all."""

from __future__ import annotations

import signal
from pathlib import Path

import sqlalchemy as sa

from batch_scorer.storage.db import create_engine
from tests.faults_support import Run
from tests.helpers import AS_OF, features_frame, load_table, save_model, train
from tests.registry_support import ok, registry_config, registry_job

ROWS = 30_000


def _rows(url: str, table: str) -> int:
    engine = create_engine(url)
    try:
        if not sa.inspect(engine).has_table(table):
            return 0
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f'SELECT count(*) FROM "{table}"')).scalar_one())  # noqa: S608
    finally:
        engine.dispose()


def test_a_killed_run_shows_neither_champion_nor_shadow_rows(tmp_path: Path, db_url: str) -> None:
    load_table(db_url, features_frame(ROWS, seed=9))
    jobs = {"j": {**registry_job(challengers=["challenger"]), "chunk_size": 200}}
    config = registry_config(tmp_path, db_url, jobs)
    ok(config, "models", "register", "churn", str(save_model(train("forest"), tmp_path / "f.joblib")),
       "--alias", "champion")
    ok(config, "models", "register", "churn", str(save_model(train("binary"), tmp_path / "b.joblib")),
       "--alias", "challenger")

    run = Run(config, "run", "j", "--as-of", str(AS_OF))
    run.wait_for_rows()
    assert run.proc.poll() is None, "the run finished before it could be killed"
    run.proc.send_signal(signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL

    assert _rows(db_url, "predictions") == 0
    assert _rows(db_url, "predictions_shadow") == 0
    assert _rows(db_url, "shadow_comparisons") == 0
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT status FROM scoring_runs")).all() == [("running",)]
    finally:
        engine.dispose()
