"""A BI reader holding a long transaction on the predictions table never blocks a
run and never sees a mix of two runs: every observation, from a poller and from
the long REPEATABLE READ transaction, is entirely the old set or the new set."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import sqlalchemy as sa

from batch_scorer.storage.db import create_engine
from tests.faults_support import Run, ok
from tests.helpers import AS_OF, features_frame, job, load_table, save_model, train, write_config

ROWS = 10_000
BY_RUN = sa.text("SELECT run_id, count(*) FROM predictions GROUP BY run_id ORDER BY run_id")


def _observe(conn: sa.Connection) -> dict[int, int]:
    return {int(r[0]): int(r[1]) for r in conn.execute(BY_RUN)}


def test_long_bi_transaction_never_blocks_a_rerun_nor_sees_a_mix(tmp_path: Path, db_url: str) -> None:
    load_table(db_url, features_frame(ROWS, seed=5))
    save_model(train("forest"), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, db_url, {"j": job(chunk_size=500)})
    as_of = ("--as-of", AS_OF.isoformat())
    ok(cfg, "run", "j", *as_of)
    old, new = {1: ROWS}, {2: ROWS}

    engine = create_engine(db_url)
    bi = engine.connect()
    try:
        # A BI refresh: one long transaction reading the table (and its view).
        if engine.dialect.name == "postgresql":
            bi = bi.execution_options(isolation_level="REPEATABLE READ")
        bi.begin()
        assert _observe(bi) == old
        bi.execute(sa.text("SELECT count(*) FROM predictions_latest")).scalar_one()

        observations: list[dict[int, int]] = []
        stop = threading.Event()

        def poll() -> None:
            # Each observation is a fresh statement in its own transaction.
            while not stop.is_set():
                with engine.connect() as conn:
                    observations.append(_observe(conn))
                    conn.rollback()
                time.sleep(0.005)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        rerun = Run(cfg, "run", "j", *as_of)
        code = rerun.finish(timeout=90)  # not blocked by the open BI transaction
        time.sleep(0.1)
        stop.set()
        poller.join(timeout=10)

        assert code == 0, rerun.stderr
        mixed = [o for o in observations if o not in (old, new)]
        assert not mixed, f"a reader saw a mix of runs: {mixed[:3]}"
        assert observations[0] == old and observations[-1] == new
        # Old set until the publish, the new set after it: one switch, never back.
        switch = observations.index(new)
        assert all(o == old for o in observations[:switch])
        assert all(o == new for o in observations[switch:])
        assert switch > 0, "the poller saw no observation while the re-run was running"
        # The long transaction still sees its snapshot, whole, after the publish
        # (REPEATABLE READ on PostgreSQL, a WAL read snapshot on SQLite)...
        assert _observe(bi) == old
        bi.rollback()
        # ...and the new set once it starts a new one.
        assert _observe(bi) == new
    finally:
        bi.close()
        engine.dispose()
