"""Stages: where an output's rows wait, invisible to readers, until the run publishes.

* :class:`CopyStage` (PostgreSQL): up to :data:`MEMORY_ROWS` rows in memory,
  COPYed in by publish; beyond, frames go straight into the output table through
  the publication's COPY writer, inside its open transaction (MVCC hides them
  until the commit).
* :class:`InsertStage` (PostgreSQL, a table with a column type binary COPY does
  not cover, e.g. ``json``): INSERTs in the same transaction.
* :class:`TempStage` (SQLite): up to :data:`MEMORY_ROWS` rows in memory, inserted
  by publish; beyond, a TEMP staging table on the publication's connection
  (private to it, gone if the process dies) that publish copies in with one
  ``INSERT ... SELECT`` that also adds the run's constants.

Every stage takes *output frames* (:func:`batch_scorer.storage.sinks.output.output_frame`):
the per-row columns only, whoever scored them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from batch_scorer.storage.db import executemany, insert_sql
from batch_scorer.storage.sinks.output import OutputSpec, python_values, records
from batch_scorer.storage.sinks.postgres_copy import CopyEncoder, CopyStream, copy_frames

log = logging.getLogger(__name__)

# A stage holds up to this many rows in memory (a few MB); beyond, SQLite's a TEMP table,
# PostgreSQL's the COPY writer thread.
MEMORY_ROWS = 5_000


class Stage(Protocol):
    """Where one output's rows wait until the publish."""

    output: OutputSpec

    def write(self, frame: pd.DataFrame) -> None:
        """Stage one output frame (its columns are ``output.row_columns``)."""

    def move_in(self, conn: Connection) -> None:
        """Inside the publish transaction: make the staged rows rows of the output table."""

    def close(self, conn: Connection) -> None:
        """Release what staging holds (after publish or abort)."""


class CopyStage:
    """PostgreSQL: frames COPYed into the output table in the publication's transaction.

    Up to :data:`MEMORY_ROWS` rows wait in memory and go in with one COPY at publish, on
    the publishing thread (a small job skipped the writer thread, its start and its
    hand-offs: 200 jobs of 100 rows took 10.0 s instead of 10.9). Beyond that every frame
    goes to the publication's COPY writer thread while the run streams (``stream``
    makes it when first needed)."""

    def __init__(self, conn: Connection, output: OutputSpec, oids: dict[str, int],
                 stream: Callable[[], CopyStream]) -> None:
        self.output = output
        self._encoder = CopyEncoder(conn, output, oids)
        self._make_stream = stream
        self._stream: CopyStream | None = None
        self._held: list[pd.DataFrame] = []
        self._held_rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        if not len(frame):
            return
        if self._stream is None and self._held_rows + len(frame) <= MEMORY_ROWS:
            self._held.append(frame)
            self._held_rows += len(frame)
            return
        if self._stream is None:
            self._stream = self._make_stream()
            for held in self._held:
                self._stream.put(self._encoder, held)
            self._held = []
        self._stream.put(self._encoder, frame)

    def move_in(self, conn: Connection) -> None:
        """The held rows (a small output), in one COPY; the streamed ones are in already."""
        if self._held:
            frames, self._held = self._held, []
            copy_frames(conn, self._encoder, frames)

    def close(self, conn: Connection) -> None:
        """Nothing to release (held frames are dropped)."""
        self._held = []


class InsertStage:
    """PostgreSQL fallback: INSERTs into the output table in the publication's transaction."""

    def __init__(self, conn: Connection, output: OutputSpec) -> None:
        self.output = output
        self._conn = conn

    def write(self, frame: pd.DataFrame) -> None:
        if len(frame):
            consts = dict(self.output.constants)
            self._conn.execute(self.output.table.insert(), [{**consts, **r} for r in records(frame)])

    def move_in(self, conn: Connection) -> None:
        """Nothing to do: the rows are in the table, waiting for the commit."""

    def close(self, conn: Connection) -> None:
        """Nothing to release."""


class TempStage:
    """SQLite: frames held in memory, or in a TEMP table once they are many; publish inserts
    them with the run's constants.

    Staging holds only what varies per row; the run's constants (job, as_of, model
    version, run_id, scored_at, challenger) are added at publish. Up to
    :data:`MEMORY_ROWS` rows wait in memory as plain tuples and publish inserts them
    straight into the output table (a small job skipped creating, filling, copying and
    dropping a TEMP table: about 4 of its 30 ms). Beyond that they go into a TEMP table
    on the publication's connection (private to it, gone if the process dies), copied in
    at publish by one ``INSERT ... SELECT``. Rows go in through the DBAPI's executemany
    with SQLAlchemy's per-value conversions applied column-wise (per-row dicts and bind
    processing dominated the write).
    """

    def __init__(self, conn: Connection, output: OutputSpec, number: int) -> None:
        self.output = output
        self._conn = conn
        self._number = number
        self._names = output.row_columns
        dialect = conn.dialect
        table = output.table
        self._procs = {c.name: c.type.dialect_impl(dialect).bind_processor(dialect) for c in table.columns}
        self._text = {c.name for c in table.columns if isinstance(c.type, sa.String)}
        self._held: list[tuple[Any, ...]] = []
        self._staging: sa.Table | None = None

    def _column(self, frame: pd.DataFrame, name: str) -> list[Any]:
        values = python_values(frame[name])
        if name in self._text and frame[name].dtype.kind == "f":
            # Numbers into a text column (a table shared with text-predicting jobs): their
            # exact text; SQLite's own conversion keeps 15 significant digits.
            values = [None if v is None else repr(v) for v in values]
        proc = self._procs[name]
        return values if proc is None else [None if v is None else proc(v) for v in values]

    def write(self, frame: pd.DataFrame) -> None:
        if not len(frame):
            return
        rows = list(zip(*(self._column(frame, name) for name in self._names), strict=True))
        if self._staging is None and len(self._held) + len(rows) <= MEMORY_ROWS:
            self._held.extend(rows)
            return
        if self._staging is None:
            self._staging = self._create_staging()
            rows, self._held = self._held + rows, []
        executemany(self._conn, str(self._staging.insert().compile(dialect=self._conn.dialect)), rows)
        self._conn.commit()

    def _create_staging(self) -> sa.Table:
        table = self.output.table
        staging = sa.Table(
            f"bs_staging_{self.output.constants['run_id']}_{self._number}",
            sa.MetaData(),
            *(sa.Column(n, table.c[n].type) for n in self._names),
            prefixes=["TEMPORARY"],
        )
        staging.create(self._conn)
        self._conn.commit()
        return staging

    def move_in(self, conn: Connection) -> None:
        table, consts = self.output.table, self.output.constants
        if self._staging is None:
            if self._held:
                self._insert_held(conn)
            return
        select = sa.select(
            *(sa.literal(consts[c.name], c.type).label(c.name) if c.name in consts else self._staging.c[c.name]
              for c in table.columns)
        )
        conn.execute(table.insert().from_select([c.name for c in table.columns], select))

    def _insert_held(self, conn: Connection) -> None:
        """The rows held in memory, with the run's constants, into the output table."""
        table, consts = self.output.table, self.output.constants
        names = [c.name for c in table.columns]
        sql, order = insert_sql(conn.dialect, table, names)
        fixed = {n: consts[n] if self._procs[n] is None or consts[n] is None else self._procs[n](consts[n])
                 for n in names if n in consts}
        at = {n: i for i, n in enumerate(self._names)}
        rows = [tuple(fixed[n] if n in fixed else row[at[n]] for n in order) for row in self._held]
        executemany(conn, sql, rows)

    def close(self, conn: Connection) -> None:
        self._held = []
        if self._staging is None:
            return
        try:
            if conn.in_transaction():
                conn.rollback()
            self._staging.drop(conn, checkfirst=True)
            conn.commit()
        except sa.exc.SQLAlchemyError:
            log.debug("dropping the staging table failed; it dies with the connection")
