"""SIGTERM and Ctrl-C during a run: rolled back, ledger row ``failed`` (interrupted),
the process exits promptly with 128 + the signal number. Real processes, real signals."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.faults_support import Run, ok
from tests.helpers import AS_OF, features_frame, job, load_table, query, save_model, train, write_config

ROWS = 30_000


def _big_job(tmp_path: Path, url: str, chunk_size: int = 1_000) -> Path:
    load_table(url, features_frame(ROWS, seed=9))
    save_model(train("forest"), tmp_path / "models" / "m.joblib")
    return write_config(tmp_path, url, {"j": job(chunk_size=chunk_size, pass_through=["note"])})


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_run_rolls_back_marks_failed_and_exits_promptly(
    tmp_path: Path, db_url: str, signum: signal.Signals
) -> None:
    cfg = _big_job(tmp_path, db_url)
    run = Run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    run.wait_for_rows()
    assert run.proc.poll() is None, "the run finished before the signal"
    sent = time.monotonic()
    run.proc.send_signal(signum)
    code = run.finish(timeout=30)
    took = time.monotonic() - sent

    assert code == 128 + signum, run.stderr
    assert took < 10, f"took {took:.1f}s to stop after {signum.name}"
    assert f"Interrupted by {signum.name}" in run.stderr
    assert "Traceback" not in run.stderr
    assert query(db_url, "SELECT count(*) FROM predictions") == [(0,)]
    [(status, error, finished)] = query(db_url, "SELECT status, error, finished_at FROM scoring_runs")
    assert status == "failed"
    assert f"interrupted by {signum.name}" in error
    assert finished is not None


def test_signal_during_rerun_keeps_published_rows(tmp_path: Path, db_url: str) -> None:
    # Small chunks keep the re-run going long enough to be caught mid-way on a busy machine.
    cfg = _big_job(tmp_path, db_url, chunk_size=200)
    ok(cfg, "run", "j", "--as-of", AS_OF.isoformat())

    rerun = Run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    rerun.wait_for_rows()
    assert rerun.proc.poll() is None, "the re-run finished before the signal"
    rerun.proc.send_signal(signal.SIGTERM)
    assert rerun.finish(timeout=30) == 128 + signal.SIGTERM, rerun.stderr
    assert query(db_url, "SELECT count(*), min(run_id), max(run_id) FROM predictions") == [(ROWS, 1, 1)]
    assert query(db_url, "SELECT run_id, status FROM scoring_runs ORDER BY run_id") == [
        (1, "succeeded"), (2, "failed"),
    ]
