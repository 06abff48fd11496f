"""Stages: where an output's rows wait, invisible to readers, until the run publishes.

* :class:`CopyStage` (PostgreSQL): frames go straight into the output table
  through the publication's COPY writer, inside its open transaction (MVCC
  hides them until the commit).
* :class:`InsertStage` (PostgreSQL, a table with a column type binary COPY does
  not cover, e.g. ``json``): INSERTs in the same transaction.
* :class:`TempStage` (SQLite): a TEMP staging table on the publication's
  connection (private to it, gone if the process dies); publish copies it in
  with one ``INSERT ... SELECT`` that also adds the run's constants.

Every stage takes *output frames* (:func:`batch_scorer.storage.sinks.output.output_frame`):
the per-row columns only, whoever scored them.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from batch_scorer.storage.sinks.output import OutputSpec, python_values, records
from batch_scorer.storage.sinks.postgres_copy import CopyEncoder, CopyStream

log = logging.getLogger(__name__)


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
    """PostgreSQL: frames COPYed into the output table in the publication's transaction."""

    def __init__(self, conn: Connection, output: OutputSpec, oids: dict[str, int], stream: CopyStream) -> None:
        self.output = output
        self._encoder = CopyEncoder(conn, output, oids)
        self._stream = stream

    def write(self, frame: pd.DataFrame) -> None:
        if len(frame):
            self._stream.put(self._encoder, frame)

    def move_in(self, conn: Connection) -> None:
        """Nothing to do: the rows are in the table, waiting for the commit."""

    def close(self, conn: Connection) -> None:
        """Nothing to release."""


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
    """SQLite: frames into a TEMP table; publish inserts them with the run's constants.

    Staging holds only what varies per row; the run's constants (job, as_of,
    model version, run_id, scored_at, challenger) are added once, by the
    ``INSERT ... SELECT`` at publish. Rows go in as plain tuples through the
    DBAPI's executemany with SQLAlchemy's per-value conversions applied
    column-wise (per-row dicts and bind processing dominated the write).
    """

    def __init__(self, conn: Connection, output: OutputSpec, number: int) -> None:
        self.output = output
        self._conn = conn
        table = output.table
        self._names = output.row_columns
        self._staging = sa.Table(
            f"bs_staging_{output.constants['run_id']}_{number}",
            sa.MetaData(),
            *(sa.Column(n, table.c[n].type) for n in self._names),
            prefixes=["TEMPORARY"],
        )
        self._staging.create(conn)
        conn.commit()
        consts = output.constants
        self._publish_select = sa.select(
            *(
                sa.literal(consts[c.name], c.type).label(c.name) if c.name in consts else self._staging.c[c.name]
                for c in table.columns
            )
        )
        dialect = conn.dialect
        self._procs = {n: table.c[n].type.dialect_impl(dialect).bind_processor(dialect) for n in self._names}
        self._insert_sql = str(self._staging.insert().compile(dialect=dialect))

    def _column(self, frame: pd.DataFrame, name: str) -> list[Any]:
        values = python_values(frame[name])
        proc = self._procs[name]
        return values if proc is None else [None if v is None else proc(v) for v in values]

    def write(self, frame: pd.DataFrame) -> None:
        if not len(frame):
            return
        columns = [self._column(frame, name) for name in self._names]
        if not self._conn.in_transaction():
            self._conn.begin()
        dbapi_conn = self._conn.connection.dbapi_connection
        assert dbapi_conn is not None
        cursor = dbapi_conn.cursor()
        try:
            cursor.executemany(self._insert_sql, zip(*columns, strict=True))
        except self._conn.dialect.loaded_dbapi.Error as exc:
            raise sa.exc.DBAPIError.instance(
                self._insert_sql, None, exc, self._conn.dialect.loaded_dbapi.Error
            ) from exc
        finally:
            cursor.close()
        self._conn.commit()

    def move_in(self, conn: Connection) -> None:
        names = [c.name for c in self.output.table.columns]
        conn.execute(self.output.table.insert().from_select(names, self._publish_select))

    def close(self, conn: Connection) -> None:
        try:
            if conn.in_transaction():
                conn.rollback()
            self._staging.drop(conn, checkfirst=True)
            conn.commit()
        except sa.exc.SQLAlchemyError:
            log.debug("dropping the staging table failed; it dies with the connection")
