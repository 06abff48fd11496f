"""The ``schedule`` daemon goes on after a failed fire: a job whose model raises on predict
fails fire after fire (each recorded ``failed``, trigger ``schedule``), the daemon keeps
running and firing, scores the job again as soon as its model file is fixed, and stops
on SIGTERM with exit 0. A real daemon process on a per-second cron
(``scheduler.allow_seconds_field``)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.faults_support import Run
from tests.gaps_support import rows_of_query, save_strict_model
from tests.helpers import save_model, train
from tests.schedule_support import scheduled_job, stop, wait_count

FAILED = ": failed, run "
SUCCEEDED = ": succeeded, run "


def test_the_daemon_goes_on_after_failed_fires_and_scores_once_the_model_is_fixed(
    tmp_path: Path, db_url: str
) -> None:
    cfg = scheduled_job(tmp_path, db_url, "* * * * * *",
                        scheduler={"catch_up_hours": 0, "allow_seconds_field": True})
    model = tmp_path / "models" / "m.joblib"
    save_strict_model(model)  # raises on predict for every green and blue row
    run = Run(cfg, "schedule")  # the config's key alone allows the seconds field

    wait_count(run, FAILED, 2, timeout=60)  # bounds for a loaded machine, not waits
    assert run.proc.poll() is None, run.stderr  # still running after two failed fires
    fixed = save_model(train("binary"), tmp_path / "models" / "fixed.joblib")
    os.replace(fixed, model)  # at once: a fire never reads half a file
    wait_count(run, SUCCEEDED, 1, timeout=60)
    assert stop(run) == 0, run.stderr

    assert "Traceback" not in run.stderr
    ledger = rows_of_query(db_url, "SELECT run_id, status, trigger, error FROM scoring_runs ORDER BY run_id")
    assert {r[2] for r in ledger} == {"schedule"}
    assert {r[1] for r in ledger} == {"failed", "succeeded"}, ledger
    failed = [r for r in ledger if r[1] == "failed"]
    assert len(failed) >= 2 and all("max_rejected_fraction" in r[3] for r in failed), failed
    first_success = min(r[0] for r in ledger if r[1] == "succeeded")
    assert all(r[1] == "succeeded" for r in ledger if r[0] > first_success), ledger  # it went on scoring
    # What readers see: one whole set, by the latest succeeded run.
    last = max(r[0] for r in ledger if r[1] == "succeeded")
    assert rows_of_query(db_url, "SELECT count(*), count(DISTINCT entity_id), min(run_id), max(run_id) "
                                 "FROM predictions") == [(200, 200, last, last)]
