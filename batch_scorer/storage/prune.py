"""Retention: deleting what the retention rules no longer keep, in short transactions.

What goes, per job (:func:`prune_job`):

* **predictions** of the as_ofs the rules no longer keep, in the output table and
  its ``_shadow`` twin. An as_of is kept when *any* rule keeps it: it is one of
  the job's last ``keep_as_ofs`` published as_ofs, or on or after ``keep_since``.
  A row the ``_latest`` view shows is never deleted: in the output table only
  rows that have a newer row of the same job and key are (an entity whose latest
  as_of is old keeps that row), so the view reads the same before and after.
  Shadow tables have no view: their rows of those as_ofs all go.
* **rejected rows** of runs that started before ``rejected_before``.
* **ledger rows** (``scoring_runs``) of runs that started before
  ``ledger_before``, with the ``feature_profiles``, ``drift`` and
  ``shadow_comparisons`` rows of those runs. Never a running run's, nor one
  whose rows are still kept anywhere (output rows and rejected rows reference
  their run_id), nor the job's last succeeded run (its model is what the next run
  compares with), nor the job's latest run with drift rows (``drift_latest``), nor a
  reference run (a model's first profiled run: its later runs compare with it), nor
  a run that another run's drift rows name as their reference (a retracted first
  run: the runs made before the retract compare with it; it goes once they have).

Deletes run in batches of at most ``batch_rows`` rows (picked by ``ctid`` on
PostgreSQL, ``rowid`` on SQLite), each batch its own short write transaction
(``BEGIN IMMEDIATE`` on SQLite). Nothing takes more than a row lock: readers of
the tables and views are never blocked, and a reader's open transaction keeps
its snapshot (PostgreSQL MVCC, SQLite WAL). ``dry_run`` counts what each step
would delete, with the same predicates, and deletes nothing.

The rules never look at a concurrent run's rows: a run publishing while prune
runs only adds rows newer than the ones prune looks at, or removes the rows of
the run it replaces (then the outcome is that of prune having run just before).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.expression import FromClause

from batch_scorer.names import short_name, split_table_name
from batch_scorer.storage import ledger, profiles
from batch_scorer.storage.db import begin_write, is_postgres
from batch_scorer.storage.schema import (
    RunStatus,
    drift,
    feature_profiles,
    rejected_rows,
    scoring_runs,
    shadow_comparisons,
)
from batch_scorer.storage.views import drift_latest_select, shadow_table_name

log = logging.getLogger(__name__)

BATCH_ROWS = 10_000  # rows deleted per transaction at most
BATCH_RUNS = 100  # ledger rows (with their profiles, drift, comparisons) per transaction at most
RUN_DEPENDENTS = (feature_profiles, drift, shadow_comparisons)
Where = Callable[[FromClause], sa.ColumnElement[bool]]
s = scoring_runs.c


@dataclass(frozen=True)
class Retention:
    """The retention rules resolved to dates and instants; None keeps everything."""

    keep_as_ofs: int | None = None  # each job's last N published as_ofs
    keep_since: date | None = None  # as_ofs on or after this date
    rejected_before: datetime | None = None  # rejected rows of runs started before this
    ledger_before: datetime | None = None  # ledger rows of runs started before this

    @property
    def prunes_predictions(self) -> bool:
        return self.keep_as_ofs is not None or self.keep_since is not None


@dataclass(frozen=True)
class Pruned:
    """Rows of one table deleted (or, in a dry run, that would be) for one job."""

    job: str
    table: str
    rows: int


def ledger_jobs(engine: Engine) -> list[str]:
    """Every job the ledger has rows of (jobs since removed from the config included)."""
    if not sa.inspect(engine).has_table(scoring_runs.name):
        return []
    with engine.connect() as conn:
        return list(conn.execute(sa.select(s.job).distinct().order_by(s.job)).scalars())


def prune_job(
    engine: Engine, job: str, rules: Retention, *, output: str | None = None, dry_run: bool = False,
    batch_rows: int = BATCH_ROWS, batch_runs: int = BATCH_RUNS,
) -> list[Pruned]:
    """Delete what ``rules`` no longer keep of ``job`` (module doc); the non-zero counts.

    ``output``: the job's output table for ledger rows that do not name theirs."""
    keep_from = _keep_from(engine, job, rules)
    batch = _Batches(engine, dry_run, batch_rows)
    done = _prune_predictions(batch, job, keep_from, output, batch_runs)
    done += _prune_rejected(batch, job, rules, batch_runs)
    done += _prune_ledger(batch, job, rules, keep_from, output, batch_runs)
    return [p for p in done if p.rows]


# ------------------------------------------------------------------ rules


def _published() -> sa.ColumnElement[bool]:
    """A run whose rows are in its output table (only those ever have rows there)."""
    return sa.and_(s.status == RunStatus.SUCCEEDED, s.replaced_by.is_(None))


def _keep_from(engine: Engine, job: str, rules: Retention) -> date | None:
    """The first as_of the rules keep (every later one is kept too), or None: keep all."""
    if not rules.prunes_predictions:
        return None
    firsts = [rules.keep_since] if rules.keep_since is not None else []
    if rules.keep_as_ofs is not None:
        nth = (sa.select(s.as_of).where(s.job == job, _published()).distinct()
               .order_by(s.as_of.desc()).offset(rules.keep_as_ofs - 1).limit(1))
        with engine.connect() as conn:
            first = conn.execute(nth).scalar()
        if first is None:
            return None  # fewer than N as_ofs: this rule keeps them all
        firsts.append(first)
    return min(firsts)


def _newer_row_exists(table: sa.Table, row: FromClause, keys: Sequence[str]) -> sa.ColumnElement[bool]:
    """A row of the same job and key with a later (as_of, run_id): ``row`` is not the one
    ``_latest`` shows (:func:`batch_scorer.storage.views.latest_view_select`)."""
    newer = table.alias("newer")
    return sa.exists().where(
        newer.c.job == row.c.job, *(newer.c[k] == row.c[k] for k in keys),
        sa.tuple_(newer.c.as_of, newer.c.run_id) > sa.tuple_(row.c.as_of, row.c.run_id),
    )


def _row_goes(table: sa.Table, keys: Sequence[str], keep_from: date) -> Where:
    """An output row of a pruned as_of that ``_latest`` does not show (a NULL key never
    goes: the view groups NULLs, an equality would not find their newer row)."""
    return lambda r: sa.and_(r.c.as_of < keep_from, *(r.c[k].is_not(None) for k in keys),
                             _newer_row_exists(table, r, keys))


def _shadow_row_goes(keep_from: date) -> Where:
    return lambda r: r.c.as_of < keep_from


def _rejected_go(rules: Retention) -> sa.ColumnElement[bool]:
    """Ledger rows whose rejected rows go."""
    if rules.rejected_before is None:
        return sa.false()
    return sa.and_(s.started_at < rules.rejected_before, s.status != RunStatus.RUNNING)


# ------------------------------------------------------------------ steps


def _prune_predictions(batch: _Batches, job: str, keep_from: date | None, output: str | None,
                       batch_runs: int) -> list[Pruned]:
    if keep_from is None:
        return []
    stmt = (sa.select(s.run_id, s.output_table)
            .where(s.job == job, _published(), s.as_of < keep_from).order_by(s.run_id))
    with batch.engine.connect() as conn:
        by_table: dict[str, list[int]] = {}
        for run_id, table in conn.execute(stmt):
            if table or output:
                by_table.setdefault(table or output, []).append(int(run_id))
    done = []
    for name, run_ids in by_table.items():
        main = _output_table(batch.engine, name)
        if main is not None:
            done.append(Pruned(job, name, _delete_runs(batch, main[0], run_ids, _row_goes(*main, keep_from),
                                                       batch_runs)))
        shadow = _run_table(batch.engine, shadow_table_name(name))
        if shadow is not None:
            done.append(Pruned(job, shadow_table_name(name),
                               _delete_runs(batch, shadow, run_ids, _shadow_row_goes(keep_from), batch_runs)))
    return done


def _delete_runs(batch: _Batches, table: sa.Table, run_ids: Sequence[int], goes: Where, batch_runs: int) -> int:
    """The rows of these runs that ``goes`` selects, ``batch_runs`` runs at a time."""
    return sum(batch.delete(table, lambda r, ids=ids: sa.and_(r.c.run_id.in_(ids), goes(r)))
               for ids in _chunks(run_ids, batch_runs))


def _prune_rejected(batch: _Batches, job: str, rules: Retention, batch_runs: int) -> list[Pruned]:
    if rules.rejected_before is None:
        return []
    has_rows = sa.exists().where(rejected_rows.c.run_id == s.run_id)
    old = sa.select(s.run_id).where(s.job == job, _rejected_go(rules), has_rows)
    rows = 0
    for ids in _pages(batch.engine, old, batch_runs):
        rows += batch.delete(rejected_rows, lambda r, ids=ids: r.c.run_id.in_(ids))
    return [Pruned(job, rejected_rows.name, rows)]


def _prune_ledger(batch: _Batches, job: str, rules: Retention, keep_from: date | None, output: str | None,
                  batch_runs: int) -> list[Pruned]:
    if rules.ledger_before is None:
        return []
    going = sa.select(s.run_id).where(
        s.job == job, s.started_at < rules.ledger_before, s.status != RunStatus.RUNNING,
        s.run_id.not_in(_protected_runs(batch.engine, job)),
        sa.not_(sa.and_(sa.exists().where(rejected_rows.c.run_id == s.run_id), sa.not_(_rejected_go(rules)))),
        *_no_rows_kept(batch.engine, job, keep_from, output),
    )
    counts = dict.fromkeys([*(t.name for t in RUN_DEPENDENTS), scoring_runs.name], 0)
    for conn, ids in batch.pages(going, batch_runs):
        for table in (*RUN_DEPENDENTS, scoring_runs):
            counts[table.name] += batch.delete_in(conn, table, table.c.run_id.in_(ids))
    return [Pruned(job, name, rows) for name, rows in counts.items()]


def _protected_runs(engine: Engine, job: str) -> list[int]:
    """The job's last succeeded run, its latest run with drift rows (``drift_latest``), its
    reference runs (one per model: what that model's runs compare with) and the runs other
    runs' drift rows name as their reference (a retracted first run, until those go)."""
    last = ledger.last_published(engine, job)
    with engine.connect() as conn:
        shown = drift_latest_select().subquery()
        latest_drift = conn.execute(sa.select(shown.c.run_id).where(shown.c.job == job).distinct()).scalars().all()
        references = [*profiles.reference_runs(conn, job), *profiles.cited_references(conn, job)]
    return [int(r) for r in (last.run_id if last else None, *latest_drift, *references) if r is not None]


def _no_rows_kept(engine: Engine, job: str, keep_from: date | None, output: str | None) -> list[Any]:
    """Conditions on a ledger row: none of its output or shadow rows outlives this prune."""
    with engine.connect() as conn:
        names = {t or output for t in conn.execute(sa.select(s.output_table).where(s.job == job).distinct()).scalars()}
    # A published run that names no output table, of a job whose output is not known
    # (removed from the config): where its rows are cannot be told, so it stays.
    conditions = [] if output else [sa.not_(sa.and_(s.output_table.is_(None), _published()))]
    for name in sorted(n for n in names if n):
        this_table = s.output_table == name if name != output else sa.or_(s.output_table == name,
                                                                          s.output_table.is_(None))
        main, plain = _output_table(engine, name), _run_table(engine, name)
        if main is not None:
            goes = _row_goes(*main, keep_from) if keep_from is not None else None
            conditions.append(sa.not_(sa.and_(this_table, _outlives(main[0], goes))))
        elif plain is not None:  # no key index to tell its latest rows by: they all stay
            conditions.append(sa.not_(sa.and_(this_table, _outlives(plain, None))))
        shadow = _run_table(engine, shadow_table_name(name))
        if shadow is not None:
            goes = _shadow_row_goes(keep_from) if keep_from is not None else None
            conditions.append(sa.not_(sa.and_(this_table, _outlives(shadow, goes))))
    return conditions


def _outlives(table: sa.Table, goes: Where | None) -> sa.ColumnElement[bool]:
    """The ledger row has a row in ``table`` this prune keeps (the predictions step only
    deletes rows of published runs)."""
    row = table.alias("kept")
    stays = sa.true() if goes is None else sa.not_(sa.and_(_published(), goes(row)))
    return sa.exists().where(row.c.run_id == s.run_id, stays)


# ------------------------------------------------------------------ tables


def _output_table(engine: Engine, name: str) -> tuple[sa.Table, list[str]] | None:
    """An existing output table's columns prune needs and its key columns, read from its
    ``_latest`` key index (job, keys..., as_of, run_id); None if there is no such table
    or index (then its rows are never deleted)."""
    schema, table = split_table_name(name)
    insp = sa.inspect(engine)
    if not insp.has_table(table, schema=schema):
        return None
    index = next((ix for ix in insp.get_indexes(table, schema=schema)
                  if ix["name"] == short_name("ix", table, "_latest")), None)
    columns = [str(c) for c in index["column_names"]] if index else []
    if "as_of" not in columns:
        log.warning("prune: output table %s has no index %s to tell its latest rows by: its rows are kept",
                    name, short_name("ix", table, "_latest"))
        return None
    keys = columns[1:columns.index("as_of")]
    cols = [sa.Column("job", sa.String(100)), *(sa.Column(k, sa.types.NullType()) for k in keys),
            sa.Column("as_of", sa.Date), sa.Column("run_id", sa.BigInteger)]
    return sa.Table(table, sa.MetaData(), *cols, schema=schema), keys


def _run_table(engine: Engine, name: str) -> sa.Table | None:
    """An existing table's ``as_of`` and ``run_id`` (a ``_shadow`` table), or None."""
    schema, table = split_table_name(name)
    if not sa.inspect(engine).has_table(table, schema=schema):
        return None
    return sa.Table(table, sa.MetaData(), sa.Column("as_of", sa.Date), sa.Column("run_id", sa.BigInteger),
                    schema=schema)


def _chunks(values: Sequence[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(values), size):
        yield list(values[i:i + size])


def _pages(engine: Engine, ids: sa.Select[Any], size: int) -> Iterator[list[int]]:
    """The run ids ``ids`` selects, ``size`` at a time in run_id order (read as needed)."""
    after = 0
    while True:
        with engine.connect() as conn:
            page = [int(r) for r in conn.execute(ids.where(s.run_id > after).order_by(s.run_id).limit(size)).scalars()]
        if not page:
            return
        yield page
        after = page[-1]


class _Batches:
    """Deletes in short transactions of at most ``batch_rows`` rows, or counts (dry run)."""

    def __init__(self, engine: Engine, dry_run: bool, batch_rows: int) -> None:
        self.engine, self.dry_run, self.batch_rows = engine, dry_run, batch_rows
        self._rowid = "ctid" if is_postgres(engine) else "rowid"

    def delete(self, table: sa.Table, where: Where) -> int:
        """Delete the rows of ``table`` that ``where`` (given the table's alias) selects."""
        row = table.alias("doomed")
        if self.dry_run:
            with self.engine.connect() as conn:
                return int(conn.execute(sa.select(sa.func.count()).select_from(row).where(where(row))).scalar_one())
        pick = sa.select(sa.literal_column(f"doomed.{self._rowid}")).select_from(row).where(where(row))
        pick = pick.limit(self.batch_rows)
        target = sa.literal_column(self._rowid)
        stmt = sa.delete(table).where(
            # ctid = ANY(ARRAY(...)): a TID scan of the picked rows, not a join.
            target == sa.any_(sa.func.array(pick.scalar_subquery())) if self._rowid == "ctid" else target.in_(pick)
        )
        total = 0
        while True:
            with begin_write(self.engine) as conn:
                deleted = int(conn.execute(stmt).rowcount or 0)
            total += deleted
            if deleted < self.batch_rows:
                return total

    def pages(self, ids: sa.Select[Any], size: int) -> Iterator[tuple[Connection, list[int]]]:
        """Pages of run ids, each with the connection of its own write transaction (chosen
        inside it, so what is deleted is what the predicate says at that moment)."""
        if self.dry_run:
            with self.engine.connect() as conn:
                for page in _pages(self.engine, ids, size):
                    yield conn, page
            return
        after = 0
        while True:
            with begin_write(self.engine) as conn:
                page = [int(r) for r in conn.execute(ids.where(s.run_id > after).order_by(s.run_id)
                                                     .limit(size)).scalars()]
                if not page:
                    return
                yield conn, page
            after = page[-1]

    def delete_in(self, conn: Connection, table: sa.Table, where: sa.ColumnElement[bool]) -> int:
        """Inside a page's transaction: delete (or count) the rows ``where`` selects."""
        if self.dry_run:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(where)).scalar_one())
        return int(conn.execute(sa.delete(table).where(where)).rowcount or 0)
