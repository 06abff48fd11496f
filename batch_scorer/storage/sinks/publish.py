"""The publish unit: everything one run makes visible, in one transaction.

A run stages any number of outputs (the champion's table, the shadow table) and
collects extra rows (rejected rows, profiles, drift, shadow comparisons). Then
:meth:`Publication.publish`, inside one transaction (``BEGIN IMMEDIATE`` on
SQLite): verifies the run still holds its job's lock, deletes from every staged
table the rows of the runs this one replaces (the job's earlier succeeded runs
of the same as_of, whatever model version scored them) and marks those runs
``replaced``, moves the staged rows in, inserts the extra rows, and lets the
caller close its ledger row. Nothing is visible before the commit; an abort, a
crash or a lost connection leaves nothing.

Output frames may come from anywhere: the run's own scoring, or another
process that scored a partition and handed back the frame (the Dask executor).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from batch_scorer.storage import ledger
from batch_scorer.storage.catalog import catalog
from batch_scorer.storage.db import TableRows, insert_rows, is_postgres
from batch_scorer.storage.sinks.output import OutputSpec
from batch_scorer.storage.sinks.postgres_copy import CopyStream, column_oids, copy_rows, copyable
from batch_scorer.storage.sinks.staging import CopyStage, InsertStage, Stage, TempStage

log = logging.getLogger(__name__)

FinishFn = Callable[[Connection], None]


class Publication:
    """One run's staged outputs and extra rows, published together (module doc).

    ``conn``: a connection to stage and publish on (e.g. the session holding the
    job's advisory lock); else one is taken from ``engine`` and closed here.
    """

    def __init__(self, engine: Engine, run_id: int, job: str, as_of: date, conn: Connection | None = None) -> None:
        self.run_id, self.job, self.as_of = run_id, job, as_of
        self._own_conn = conn is None
        self._conn = conn if conn is not None else engine.connect()
        self._postgres = is_postgres(engine)
        self._tx = self._conn.begin() if self._postgres else None
        self._stream: CopyStream | None = None
        self._stages: list[Stage] = []
        self._extra: list[tuple[sa.Table, TableRows]] = []
        self._clear: list[sa.Table] = []

    def stage(self, output: OutputSpec) -> Stage:
        """Where ``output``'s frames wait until :meth:`publish`."""
        stage: Stage
        if not self._postgres:
            stage = TempStage(self._conn, output, len(self._stages))
        else:
            table = output.table
            oids = catalog(self._conn.engine).oids((table.schema, table.name),
                                                   lambda: column_oids(self._conn, table))
            odd = copyable(oids, output.table)
            if odd:
                log.info("output table %s: column(s) %s have types binary COPY does not cover here; "
                         "writing with INSERTs", output.table.name, odd)
                stage = InsertStage(self._conn, output)
            else:
                stage = CopyStage(self._conn, output, oids, self._copy_stream)
        self._stages.append(stage)
        return stage

    def _copy_stream(self) -> CopyStream:
        """The publication's COPY writer thread, started when a stage first needs it."""
        if self._stream is None:
            self._stream = CopyStream(self._conn)
        return self._stream

    def add_rows(self, table: sa.Table, rows: Sequence[dict[str, Any]] | TableRows) -> None:
        """Rows inserted into ``table`` at publish (small: profiles, comparisons...): dicts
        with the same keys, or tuples under their names."""
        if len(rows):
            self._extra.append((table, rows if isinstance(rows, TableRows) else TableRows.of(rows)))

    def also_replace_in(self, table: sa.Table) -> None:
        """Also delete the replaced runs' rows from ``table`` (e.g. a shadow table this run did not stage)."""
        self._clear.append(table)

    def publish(self, finish: FinishFn, verify: FinishFn | None = None) -> list[int]:
        """Make everything visible at once; returns the run ids this run replaced."""
        try:
            if self._postgres:
                if self._stream is not None:
                    self._stream.drain()
                replaced = self._in_transaction(self._conn, finish, verify)
                assert self._tx is not None
                self._tx.commit()
            else:
                conn = self._conn.execution_options(sqlite_begin="IMMEDIATE")
                with conn.begin():
                    replaced = self._in_transaction(conn, finish, verify)
        finally:
            self._close()
        return replaced

    def abort(self) -> None:
        """Discard everything staged (the transaction rolls back)."""
        try:
            if self._stream is not None:
                self._stream.abort()
            if self._tx is not None and self._tx.is_active:
                self._tx.rollback()
        finally:
            self._close()

    def _in_transaction(self, conn: Connection, finish: FinishFn, verify: FinishFn | None) -> list[int]:
        if verify is not None:
            verify(conn)
        tables = _unique([s.output.table for s in self._stages] + self._clear)
        main = _name(self._stages[0].output.table) if self._stages else None
        replaced = ledger.replace_runs(conn, self.job, self.as_of, self.run_id, main)
        for run_id in replaced:
            # One run_id constant at a time, through ix_<table>_run: as a
            # constant the planner sizes the delete from the column's statistics.
            for table in tables:
                conn.execute(sa.delete(table).where(table.c.run_id == run_id))
        for stage in self._stages:
            stage.move_in(conn)
        for table, rows in self._extra:
            if not (self._postgres and copy_rows(conn, table, rows)):
                insert_rows(conn, table, rows)
        finish(conn)
        return replaced

    def _close(self) -> None:
        try:
            for stage in self._stages:
                stage.close(self._conn)
        finally:
            if self._own_conn:
                self._conn.close()
            elif self._conn.in_transaction():
                self._conn.rollback()


def _name(table: sa.Table) -> str:
    return table.name if table.schema is None else f"{table.schema}.{table.name}"


def _unique(tables: list[sa.Table]) -> list[sa.Table]:
    seen: dict[str, sa.Table] = {}
    for t in tables:
        seen.setdefault(_name(t), t)
    return list(seen.values())
