"""The ``scoring_runs`` ledger: every query on it lives here.

Runs are recorded when they start (``running``, committed at once so observers
see them) and closed inside the transaction that publishes them. Attempts that
could not start are recorded too, already closed: ``invalid`` (a bad model,
source or output) and ``skipped`` (the job's lock was held, an upstream job
failed). Whoever holds a job's lock (:mod:`batch_scorer.storage.locks`) knows
every other ``running`` row of that job is stale and marks it ``abandoned``.
A published run that a later run of the same job and as_of replaces keeps its
``succeeded`` status and gets ``replaced_by`` (the run whose rows are now the
set); one an operator retracts becomes ``retracted``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from batch_scorer.storage.db import begin_write
from batch_scorer.storage.schema import RunStatus, UTCDateTime, scoring_runs, utcnow
from batch_scorer.storage.views import SCORING_RUNS_BI

log = logging.getLogger(__name__)

HOST = socket.gethostname()
ERROR_MAX_CHARS = 4000
S = RunStatus


@dataclass(frozen=True)
class RunRecord:
    """One row of ``scoring_runs``."""

    run_id: int
    job: str
    model_version: str | None
    model_sha256: str | None
    model_sklearn_version: str | None
    model_name: str | None
    model_registry_version: int | None
    as_of: date
    trigger: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    rows_read: int
    rows_scored: int
    rows_rejected: int
    output_table: str | None
    error: str | None
    host: str
    pid: int
    replaced_by: int | None
    drift_status: str | None

    @property
    def rows_published(self) -> int:
        """Rows this run made visible (a succeeded run's, until a later run replaces them),
        as counted when it ran: ``prune`` removing old rows since does not change it."""
        return self.rows_scored if self.status == S.SUCCEEDED and self.replaced_by is None else 0

    @property
    def seconds(self) -> float | None:
        return (self.finished_at - self.started_at).total_seconds() if self.finished_at else None


@dataclass(frozen=True)
class ModelStamp:
    """What the ledger records about the model a run scored with."""

    version: str | None = None
    sha256: str | None = None
    sklearn_version: str | None = None
    name: str | None = None
    registry_version: int | None = None

    def values(self) -> dict[str, Any]:
        return {
            "model_version": self.version, "model_sha256": self.sha256,
            "model_sklearn_version": self.sklearn_version, "model_name": self.name,
            "model_registry_version": self.registry_version,
        }


@dataclass(frozen=True)
class RunStart:
    """What a run's ``running`` row records when it starts."""

    job: str
    model: ModelStamp
    as_of: date
    trigger: str
    output_table: str


def start_run(engine: Engine, *, job: str, model: ModelStamp, as_of: date, trigger: str, output_table: str) -> int:
    """:func:`start_runs` for one run."""
    return start_runs(engine, [RunStart(job, model, as_of, trigger, output_table)])[0]


def start_runs(engine: Engine, starts: Sequence[RunStart]) -> list[int]:
    """Call while holding the jobs' locks: mark the jobs' stale ``running`` rows ``abandoned``
    and insert each run's ``running`` row, committed at once so observers see the runs
    (one transaction for the jobs of one read); their run ids, in order.

    On PostgreSQL that commit does not wait for the disk (``synchronous_commit off``,
    for this transaction only): other sessions see it at once, and a server crash
    could only lose a row whose run then fails anyway. The commit that publishes a
    run is durable."""
    if not starts:
        return []
    now = utcnow()
    with begin_write(engine) as conn:
        _relaxed(conn)
        abandoned = conn.execute(
            scoring_runs.update()
            .where(scoring_runs.c.job.in_(sorted({s.job for s in starts})), scoring_runs.c.status == S.RUNNING)
            .values(status=S.ABANDONED, finished_at=now,
                    error="the process stopped without finishing (found stale by a later run)")
            .returning(scoring_runs.c.job)
        ).scalars().all()
        ids = conn.execute(
            scoring_runs.insert().returning(scoring_runs.c.run_id, sort_by_parameter_order=True),
            [{"job": s.job, "as_of": s.as_of, "trigger": s.trigger, "status": S.RUNNING, "started_at": now,
              "host": HOST, "pid": os.getpid(), "output_table": s.output_table, **s.model.values()}
             for s in starts],
        ).scalars().all()
    for job, count in Counter(abandoned).items():
        log.warning("job %s: marked %d stale running run(s) as abandoned", job, count)
    return [int(i) for i in ids]


def _relaxed(conn: Connection) -> None:
    """This transaction's commit need not wait for the disk (PostgreSQL; see start_run)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")


def record_attempt(
    engine: Engine, *, job: str, as_of: date, trigger: str, status: RunStatus, error: str,
    model: ModelStamp | None = None, output_table: str | None = None,
) -> int:
    """Record an attempt that never started (``invalid`` or ``skipped``), already closed."""
    now = utcnow()
    with begin_write(engine) as conn:
        _relaxed(conn)
        result = conn.execute(
            scoring_runs.insert().values(
                job=job, as_of=as_of, trigger=trigger, status=status, started_at=now, finished_at=now,
                host=HOST, pid=os.getpid(), output_table=output_table, error=error[:ERROR_MAX_CHARS],
                **(model or ModelStamp()).values(),
            )
        )
        return int(result.inserted_primary_key[0])


def finish_run(
    conn: Connection, run_id: int, *, rows_read: int = 0, rows_scored: int = 0, rows_rejected: int = 0,
    drift_status: str | None = None,
) -> None:
    """Close a run's row as ``succeeded`` inside the caller's (publish) transaction."""
    conn.execute(_FINISH, {"b_rid": run_id, "b_status": S.SUCCEEDED, "b_at": utcnow(), "b_read": rows_read,
                           "b_scored": rows_scored, "b_rejected": rows_rejected, "b_drift": drift_status})


# Statements every job's publish runs, built once: SQLAlchemy then finds each compiled in
# its cache from a key made once (a statement built per call cost 5x as much to execute).
_FINISH = (scoring_runs.update().where(scoring_runs.c.run_id == sa.bindparam("b_rid"))
           .values(status=sa.bindparam("b_status"), finished_at=sa.bindparam("b_at"), rows_read=sa.bindparam("b_read"),
                   rows_scored=sa.bindparam("b_scored"), rows_rejected=sa.bindparam("b_rejected"),
                   drift_status=sa.bindparam("b_drift")))


def fail_run(engine: Engine, run_id: int, error: str, drift_status: str | None = None, **counts: int) -> None:
    """Mark a run ``failed`` in its own transaction (on a new connection: the run's own
    may be dead). Only a ``running`` row changes: if the publish did commit before
    the failure (e.g. a signal during COMMIT), the ledger keeps saying ``succeeded``.
    ``drift_status``: ``alert`` for a run that drift monitoring refused."""
    with begin_write(engine) as conn:
        conn.execute(
            scoring_runs.update()
            .where(scoring_runs.c.run_id == run_id, scoring_runs.c.status == S.RUNNING)
            .values(status=S.FAILED, finished_at=utcnow(), error=error[:ERROR_MAX_CHARS], drift_status=drift_status,
                    **counts)
        )


def replaced_runs(
    conn: Connection, job: str, as_of: date, run_id: int, output_table: str | None
) -> list[int]:
    """The published runs of ``job`` for this as_of (into the same output table) that a new
    run ``run_id`` replaces: an output table holds one set per job and as_of, whatever
    model version scored it (rows are only ever published together with their run's
    ``succeeded`` row)."""
    stmt = sa.select(scoring_runs.c.run_id).where(*_replaced_by(job, as_of, run_id, output_table))
    return list(conn.execute(stmt).scalars())


def replace_runs(conn: Connection, job: str, as_of: date, run_id: int, output_table: str | None) -> list[int]:
    """Inside the publish transaction: mark :func:`replaced_runs` replaced by ``run_id``, in one
    statement; their ids (the caller deletes their rows in the same transaction)."""
    stmt = _REPLACE_ANY if output_table is None else _REPLACE_IN
    params = {"b_job": job, "b_as_of": as_of, "b_rid": run_id, "b_out": output_table}
    return sorted(conn.execute(stmt, params).scalars())


def _replaced_by(job: Any, as_of: Any, run_id: Any, output_table: Any | None) -> list[sa.ColumnElement[bool]]:
    """The runs a new run ``run_id`` of ``job`` and ``as_of`` replaces (:func:`replaced_runs`);
    values or bound parameters."""
    r = scoring_runs.c
    where = [r.job == job, r.as_of == as_of, r.status == S.SUCCEEDED, r.replaced_by.is_(None), r.run_id != run_id]
    if output_table is not None:
        where.append(sa.or_(r.output_table == output_table, r.output_table.is_(None)))
    return where


def _replace_statement(with_table: bool) -> sa.Update:
    where = _replaced_by(sa.bindparam("b_job"), sa.bindparam("b_as_of", type_=sa.Date), sa.bindparam("b_rid"),
                         sa.bindparam("b_out") if with_table else None)
    return (scoring_runs.update().where(*where).values(replaced_by=sa.bindparam("b_rid"))
            .returning(scoring_runs.c.run_id))


_REPLACE_IN, _REPLACE_ANY = _replace_statement(True), _replace_statement(False)


def mark_retracted(conn: Connection, run_id: int, note: str) -> None:
    """Inside the retract transaction: the run's rows were just deleted."""
    conn.execute(
        scoring_runs.update()
        .where(scoring_runs.c.run_id == run_id)
        .values(status=S.RETRACTED, error=note[:ERROR_MAX_CHARS])
    )


def get_run(conn: Connection | Engine, run_id: int) -> RunRecord | None:
    """One ledger row, or None."""
    stmt = _record_select().where(scoring_runs.c.run_id == run_id)
    if isinstance(conn, Engine):
        with conn.connect() as c:
            row = c.execute(stmt).first()
    else:
        row = conn.execute(stmt).first()
    return RunRecord(**row._mapping) if row is not None else None


def _record_select() -> sa.Select[Any]:
    return sa.select(*(scoring_runs.c[f] for f in RunRecord.__dataclass_fields__))


def list_runs(
    engine: Engine, job: str | Sequence[str] | None = None, limit: int = 20,
    status: Sequence[str] = (), since: datetime | None = None,
) -> list[RunRecord]:
    """The latest runs, newest first (of one job or several, of some statuses, since a time)."""
    stmt = _record_select()
    if isinstance(job, str):
        stmt = stmt.where(scoring_runs.c.job == job)
    elif job:
        stmt = stmt.where(scoring_runs.c.job.in_(list(job)))
    if status:
        stmt = stmt.where(scoring_runs.c.status.in_(list(status)))
    if since is not None:
        stmt = stmt.where(scoring_runs.c.started_at >= since)
    stmt = stmt.order_by(scoring_runs.c.run_id.desc()).limit(limit)
    with engine.connect() as conn:
        return [RunRecord(**row._mapping) for row in conn.execute(stmt)]


def published_as_ofs(engine: Engine, job: str, model_version: str) -> set[date]:
    """The as_of dates whose published set of ``job`` was scored by this model version."""
    stmt = sa.select(scoring_runs.c.as_of).where(
        scoring_runs.c.job == job,
        scoring_runs.c.model_version == model_version,
        scoring_runs.c.status == S.SUCCEEDED,
        scoring_runs.c.replaced_by.is_(None),
    )
    with engine.connect() as conn:
        return {_as_date(v) for v in conn.execute(stmt).scalars()}


def _bi_view() -> Any:
    """The columns of the ``scoring_runs_bi`` view that the monitoring report reads."""
    return sa.table(
        SCORING_RUNS_BI, sa.column("run_id"), sa.column("job"), sa.column("as_of", sa.Date()),
        sa.column("status"), sa.column("rows_read"), sa.column("rows_scored"), sa.column("rows_rejected"),
        sa.column("model_version"), sa.column("replaced_by"), sa.column("drift_status"),
        sa.column("started_at", UTCDateTime()),
        sa.column("finished_at", UTCDateTime()),
    ).c


def recent_runs_bi(conn: Connection, job: str, limit: int) -> list[dict[str, Any]]:
    """The job's last ``limit`` runs, newest first, from the ``scoring_runs_bi`` view (no host,
    pid or error): what a role that may only read the views (BI's) can read. Each a dict of
    ``run_id, as_of, status, rows_read, rows_scored, rows_rejected, model_version, seconds,
    replaced_by, drift_status``."""
    v = _bi_view()
    stmt = (sa.select(v.run_id, v.as_of, v.status, v.rows_read, v.rows_scored, v.rows_rejected, v.model_version,
                      v.replaced_by, v.drift_status, v.started_at, v.finished_at)
            .where(v.job == job).order_by(v.run_id.desc()).limit(limit))
    out = []
    for row in conn.execute(stmt):
        values = dict(row._mapping)
        started, finished = values.pop("started_at"), values.pop("finished_at")
        values["seconds"] = (finished - started).total_seconds() if started and finished else None
        out.append(values)
    return out


def published_run_ids_bi(conn: Connection, job: str, limit: int) -> list[int]:
    """The run ids of the job's last ``limit`` published runs (one per as_of: not replaced),
    newest as_of first, from the ``scoring_runs_bi`` view."""
    v = _bi_view()
    stmt = (sa.select(v.run_id)
            .where(v.job == job, v.status == S.SUCCEEDED.value, v.replaced_by.is_(None))
            .order_by(v.as_of.desc(), v.run_id.desc()).limit(limit))
    return [int(r) for r in conn.execute(stmt).scalars()]


def scored_since(engine: Engine, job: str, as_of: date, since: datetime) -> int | None:
    """The run_id of a run that published this as_of and started at or after ``since`` (a
    scheduled fire's time), even if a later run has replaced it since."""
    stmt = (
        sa.select(scoring_runs.c.run_id)
        .where(
            scoring_runs.c.job == job,
            scoring_runs.c.as_of == as_of,
            scoring_runs.c.status == S.SUCCEEDED,
            scoring_runs.c.started_at >= since,
        )
        .order_by(scoring_runs.c.run_id)
        .limit(1)
    )
    with engine.connect() as conn:
        return conn.execute(stmt).scalar()


def job_names(engine: Engine, name: str) -> list[str]:
    """The ledger's job names that are ``name`` or an expansion under it (``name.``...),
    those no longer in the config too, sorted."""
    c = scoring_runs.c
    stmt = (sa.select(c.job).where(sa.or_(c.job == name, c.job.startswith(f"{name}.", autoescape=True)))
            .distinct().order_by(c.job))
    with engine.connect() as conn:
        return list(conn.execute(stmt).scalars())


def last_published(engine: Engine, job: str) -> RunRecord | None:
    """The job's latest succeeded run (its model version tells whether the model changed)."""
    return last_published_many(engine, [job]).get(job)


# Jobs per query of last_published_many (bind parameters stay well under SQLite's limit).
JOBS_PER_QUERY = 500


def last_published_many(engine: Engine, jobs: Sequence[str]) -> dict[str, RunRecord]:
    """Each job's latest succeeded run, for many jobs in a few queries (a fleet's planning);
    a job with none is absent."""
    out: dict[str, RunRecord] = {}
    with engine.connect() as conn:
        for start in range(0, len(jobs), JOBS_PER_QUERY):
            latest = (sa.select(sa.func.max(scoring_runs.c.run_id))
                      .where(scoring_runs.c.job.in_(list(jobs[start:start + JOBS_PER_QUERY])),
                             scoring_runs.c.status == S.SUCCEEDED)
                      .group_by(scoring_runs.c.job))
            for row in conn.execute(_record_select().where(scoring_runs.c.run_id.in_(latest))):
                out[row.job] = RunRecord(**row._mapping)
    return out


@dataclass(frozen=True)
class Holder:
    """The run that holds a job's lock, as far as the ledger knows."""

    run_id: int
    as_of: date
    pid: int
    host: str
    started_at: datetime

    def text(self) -> str:
        return (f"run {self.run_id} (as_of {self.as_of}, pid {self.pid} on host {self.host}, "
                f"started {self.started_at:%Y-%m-%d %H:%M:%S} UTC)")


def running_holder(engine: Engine, job: str) -> Holder | None:
    """The job's newest ``running`` row: who holds its lock (None: just starting)."""
    stmt = (
        sa.select(scoring_runs.c.run_id, scoring_runs.c.as_of, scoring_runs.c.pid, scoring_runs.c.host,
                  scoring_runs.c.started_at)
        .where(scoring_runs.c.job == job, scoring_runs.c.status == S.RUNNING)
        .order_by(scoring_runs.c.run_id.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        return None
    return Holder(int(row.run_id), _as_date(row.as_of), int(row.pid), str(row.host), row.started_at)


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))
