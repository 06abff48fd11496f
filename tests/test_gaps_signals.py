"""SIGTERM with several jobs running at once on worker threads (``run --all --parallel 2``):
every job rolls back and records itself before the process exits 143, and no output
holds part of a set. Real processes, real signals."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.faults_support import Run
from tests.fleet_support import as_of_arg, country_frame, matrix_job
from tests.gaps_support import poll, rows_of_query
from tests.helpers import load_table, save_model, train, write_config

COUNTRIES = ["AT", "BE", "CH", "DE"]
ROWS = 4_000  # per country


def _running(url: str) -> int:
    try:
        return int(rows_of_query(url, "SELECT count(*) FROM scoring_runs WHERE status = 'running'")[0][0])
    except Exception:  # noqa: BLE001 - the ledger does not exist yet
        return 0


def test_sigterm_with_two_jobs_running_in_parallel_records_each_and_publishes_no_part_of_a_set(
    tmp_path: Path, db_url: str
) -> None:
    load_table(db_url, country_frame(ROWS, COUNTRIES))
    for country in COUNTRIES:
        save_model(train("forest"), tmp_path / "models" / f"m_{country}.joblib")
    cfg = write_config(tmp_path, db_url, {"m": matrix_job(COUNTRIES, chunk_size=200)})

    run = Run(cfg, "run", "--all", "--parallel", "2", *as_of_arg())
    poll(lambda: _running(db_url) >= 2, timeout=60, what="two jobs running at once",
         alive=lambda: run.proc.poll() is None)
    run.wait_for_rows()
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish(timeout=30) == 128 + signal.SIGTERM, run.stderr
    assert "Traceback" not in run.stderr

    ledger = rows_of_query(db_url, "SELECT run_id, job, status, error FROM scoring_runs ORDER BY run_id")
    assert ledger, run.stderr
    interrupted = [r for r in ledger if r[2] == "failed"]
    assert len(interrupted) >= 2, ledger  # both jobs running at the signal were stopped
    assert all("interrupted by SIGTERM" in (r[3] or "") for r in interrupted), ledger
    assert {r[2] for r in ledger} <= {"failed", "succeeded"}, ledger  # none left running
    published = {(job, run_id): (n, distinct) for job, run_id, n, distinct in rows_of_query(
        db_url, "SELECT job, run_id, count(*), count(DISTINCT entity_id) FROM predictions GROUP BY job, run_id")}
    succeeded = {(job, run_id) for run_id, job, status, _ in ledger if status == "succeeded"}
    assert set(published) == succeeded  # only succeeded runs have rows, and each of them has
    assert all(counts == (ROWS, ROWS) for counts in published.values()), published  # whole sets only
