"""The ``scoring_runs`` ledger: every query on it lives here.

Runs are recorded when they start (``running``, committed at once so observers
see them) and closed inside the transaction that publishes them. Whoever holds
a job's lock (:mod:`batch_scorer.storage.locks`) knows every other ``running``
row of that job is stale and marks it ``abandoned``.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from batch_scorer.storage.db import begin_write
from batch_scorer.storage.schema import scoring_runs, utcnow

log = logging.getLogger(__name__)

HOST = socket.gethostname()
ERROR_MAX_CHARS = 4000


@dataclass(frozen=True)
class RunRecord:
    """One row of ``scoring_runs``."""

    run_id: int
    job: str
    model_version: str
    as_of: date
    trigger: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    rows_read: int
    rows_scored: int
    rows_rejected: int
    error: str | None
    host: str
    pid: int


def start_run(
    engine: Engine,
    *,
    job: str,
    model_version: str,
    model_sha256: str,
    model_sklearn_version: str,
    as_of: date,
    trigger: str,
    output_table: str,
) -> int:
    """Insert a ``running`` row and commit it at once, so observers see the run."""
    with begin_write(engine) as conn:
        result = conn.execute(
            scoring_runs.insert().values(
                job=job,
                model_version=model_version,
                model_sha256=model_sha256,
                model_sklearn_version=model_sklearn_version,
                as_of=as_of,
                trigger=trigger,
                status="running",
                started_at=utcnow(),
                host=HOST,
                pid=os.getpid(),
                output_table=output_table,
            )
        )
        return int(result.inserted_primary_key[0])


def finish_run(
    conn: Connection,
    run_id: int,
    status: str,
    *,
    rows_read: int = 0,
    rows_scored: int = 0,
    rows_rejected: int = 0,
    error: str | None = None,
) -> None:
    """Close a run's row inside the caller's transaction (the publish, for success)."""
    conn.execute(
        scoring_runs.update()
        .where(scoring_runs.c.run_id == run_id)
        .values(
            status=status,
            finished_at=utcnow(),
            rows_read=rows_read,
            rows_scored=rows_scored,
            rows_rejected=rows_rejected,
            error=error[:ERROR_MAX_CHARS] if error else None,
        )
    )


def fail_run(engine: Engine, run_id: int, error: str, **counts: int) -> None:
    """Mark a run ``failed`` in its own transaction (on a new connection: the run's own
    may be dead). Only a ``running`` row changes: if the publish did commit before
    the failure (e.g. a signal during COMMIT), the ledger keeps saying ``succeeded``."""
    with begin_write(engine) as conn:
        conn.execute(
            scoring_runs.update()
            .where(scoring_runs.c.run_id == run_id, scoring_runs.c.status == "running")
            .values(
                status="failed",
                finished_at=utcnow(),
                error=error[:ERROR_MAX_CHARS],
                **counts,
            )
        )


def mark_abandoned(engine: Engine, job: str) -> int:
    """Call while holding the job's lock: any ``running`` row of the job is stale."""
    with begin_write(engine) as conn:
        result = conn.execute(
            scoring_runs.update()
            .where(scoring_runs.c.job == job, scoring_runs.c.status == "running")
            .values(
                status="abandoned",
                finished_at=utcnow(),
                error="the process stopped without finishing (found stale by a later run)",
            )
        )
    if result.rowcount:
        log.warning("job %s: marked %d stale running run(s) as abandoned", job, result.rowcount)
    return int(result.rowcount or 0)


def list_runs(engine: Engine, job: str | None = None, limit: int = 20) -> list[RunRecord]:
    """The latest runs, newest first."""
    stmt = sa.select(*(scoring_runs.c[f] for f in RunRecord.__dataclass_fields__))
    if job:
        stmt = stmt.where(scoring_runs.c.job == job)
    stmt = stmt.order_by(scoring_runs.c.run_id.desc()).limit(limit)
    with engine.connect() as conn:
        return [RunRecord(**row._mapping) for row in conn.execute(stmt)]


def succeeded_as_ofs(engine: Engine, job: str, model_version: str) -> set[date]:
    """The as_of dates that have a succeeded run of ``job`` with this model version."""
    stmt = sa.select(scoring_runs.c.as_of).where(
        scoring_runs.c.job == job,
        scoring_runs.c.model_version == model_version,
        scoring_runs.c.status == "succeeded",
    )
    with engine.connect() as conn:
        return {_as_date(v) for v in conn.execute(stmt).scalars()}


def replaced_runs(conn: Connection, job: str, as_of: date, model_version: str, run_id: int) -> list[int]:
    """The other succeeded runs of ``job`` for this as_of and model version: the runs
    whose published rows a new run ``run_id`` replaces (rows are only ever
    published together with their run's ``succeeded`` row)."""
    stmt = sa.select(scoring_runs.c.run_id).where(
        scoring_runs.c.job == job,
        scoring_runs.c.as_of == as_of,
        scoring_runs.c.model_version == model_version,
        scoring_runs.c.status == "succeeded",
        scoring_runs.c.run_id != run_id,
    )
    return list(conn.execute(stmt).scalars())


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def holder_text(engine: Engine, job: str) -> str:
    stmt = (
        sa.select(
            scoring_runs.c.run_id, scoring_runs.c.host, scoring_runs.c.pid,
            scoring_runs.c.started_at, scoring_runs.c.as_of,
        )
        .where(scoring_runs.c.job == job, scoring_runs.c.status == "running")
        .order_by(scoring_runs.c.run_id.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        return "another process (its run is just starting)"
    return (
        f"run {row.run_id} (as_of {row.as_of}, pid {row.pid} on host {row.host}, "
        f"started {row.started_at:%Y-%m-%d %H:%M:%S} UTC)"
    )
