"""Shared set-up for the scheduler and backfill tests: a small job and a daemon process."""

from __future__ import annotations

import os
import signal
import socket
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from batch_scorer.storage.db import create_engine
from batch_scorer.storage.ddl import create_tool_tables
from batch_scorer.storage.schema import job_locks, scoring_runs
from tests.faults_support import Run
from tests.helpers import features_frame, job, load_table, save_model, train, write_config

SECONDS_CRON = {"BATCH_SCORER_ALLOW_SECONDS_CRON": "1"}
START = date(2026, 1, 1)


def scheduled_job(
    tmp_path: Path, url: str, schedule: str, rows: int = 200, kind: str = "binary",
    scheduler: dict[str, Any] | None = None, **extra: Any,
) -> Path:
    """One job scoring the whole ``features`` table (no as_of filter) on ``schedule``."""
    load_table(url, features_frame(rows, seed=3))
    save_model(train(kind), tmp_path / "models" / "m.joblib")
    return write_config(
        tmp_path, url, {"j": job(as_of_column=None, schedule=schedule, **extra)},
        scheduler=scheduler or {"catch_up_hours": 0},
    )


def dated_job(tmp_path: Path, url: str, days: int = 10, rows: int = 100, **extra: Any) -> Path:
    """One job over a feature table with ``rows`` rows for each of ``days`` snapshot dates."""
    frames = [features_frame(rows, seed=i, as_of=START + timedelta(days=i)) for i in range(days)]
    load_table(url, pd.concat(frames, ignore_index=True))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    return write_config(tmp_path, url, {"j": job(**extra)})


def daemon(cfg: Path, *args: str) -> Run:
    """``batch-scorer schedule`` as a real process, with per-second crons allowed."""
    return Run(cfg, "schedule", *args, env=SECONDS_CRON)


def stop(run: Run, timeout: float = 30) -> int:
    """SIGTERM the daemon and return its exit code."""
    if run.proc.poll() is None:
        run.proc.send_signal(signal.SIGTERM)
    return run.finish(timeout=timeout)


def count_lines(run: Run, text: str) -> int:
    """How many stderr lines so far contain ``text``."""
    return sum(text in line for line in run.lines)


def hold_job_lock(url: str, job: str, as_of: date) -> int:
    """Hold ``job``'s SQLite lock as another run would (a backfill of ``as_of``): a
    ``running`` ledger row and a lock row, both of this test's live process. Returns the run_id."""
    engine = create_engine(url)
    try:
        create_tool_tables(engine)
        with engine.begin() as conn:
            run_id = conn.execute(scoring_runs.insert().values(
                job=job, model_version="other", model_sha256="0" * 64, as_of=as_of, trigger="backfill",
                status="running", started_at=datetime.now(UTC), host=socket.gethostname(), pid=os.getpid(),
            )).inserted_primary_key[0]
            conn.execute(job_locks.insert().values(
                job=job, run_id=run_id, host=socket.gethostname(), pid=os.getpid(), acquired_at=datetime.now(UTC),
            ))
        return int(run_id)
    finally:
        engine.dispose()


def release_job_lock(url: str, job: str) -> None:
    """Let go of the lock :func:`hold_job_lock` took (the holder finished)."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.delete(job_locks).where(job_locks.c.job == job))
    finally:
        engine.dispose()


def wait_count(run: Run, text: str, n: int, timeout: float = 20) -> None:
    """Until ``n`` stderr lines contain ``text``; fail (and kill the daemon) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while count_lines(run, text) < n:
        if time.monotonic() > deadline or run.proc.poll() is not None:
            run.proc.kill()
            raise AssertionError(f"expected {n} lines with {text!r}:\n{run.stderr}")
        time.sleep(0.1)
