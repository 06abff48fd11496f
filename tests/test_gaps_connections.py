"""The connections one run opens with the pooled engine on PostgreSQL, counted for real.

docs/architecture.md ("Connections a run opens") says: three connections per job on
PostgreSQL, plus one per group for the read. Measured here on jobs reading one source
(one read-once group):

* SQLAlchemy's connections: every connection the engine ``api.run`` opens fires the
  pool's ``connect`` event; those whose session has this test's ``application_name``
  are the run's (exact, whenever they were opened);
* the ADBC reader's sessions (not SQLAlchemy's): the sessions with this test's
  ``application_name`` in ``pg_stat_activity`` while the job reports progress, less the
  SQLAlchemy ones.

A job holds two (its lock session and its publication's connection); the group's read
holds two (the SQLAlchemy connection the executor keeps checked out for the stream, and
the ADBC connection that reads); ledger updates reuse idle pooled connections and open
none. One job: 4 (the documented 3 + 1); three jobs on one source: 8, not 10.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults_support import app_url, run_counting_sessions, sessions, unique_name
from tests.gaps_support import poll
from tests.helpers import features_frame, job, load_table, save_model, train, write_config


@pytest.mark.parametrize("jobs", [1, 3])
def test_a_run_opens_two_connections_per_job_and_two_for_its_groups_read_on_postgres(
    tmp_path: Path, pg_url: str, jobs: int
) -> None:
    app = unique_name("gaps_conn")
    load_table(pg_url, features_frame(2_000, seed=1))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    names = [f"j{i}" for i in range(jobs)]
    cfg = write_config(tmp_path, app_url(pg_url, app), {n: job(output=f"out_{n}", chunk_size=500) for n in names})
    seen = run_counting_sessions(cfg, pg_url, app, names)
    results, opened, live = seen.results, seen.opened, seen.live
    assert [r.status for r in results] == ["succeeded"] * jobs
    assert len(opened) == 2 * jobs + 1, opened  # lock + publication per job, the stream's connection
    assert len(live - opened) == 1, live - opened  # one ADBC connection reads for the group
    assert len(opened | live) == 2 * jobs + 2  # one job: 4; three jobs: 8 (the doc's rule says 10)
    # And none outlives the run: the engine and its ADBC pool are closed with it.
    poll(lambda: not sessions(pg_url, app), timeout=10, what="the run's sessions to end")
