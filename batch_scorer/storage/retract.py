"""``batch-scorer retract RUN_ID``: take a published run back.

In one transaction (``BEGIN IMMEDIATE`` on SQLite): the run's rows leave its
output table and its ``_shadow`` twin, the job's ``model_metrics`` of that as_of
go (they measured predictions no longer published; ``evaluate`` computes them
again for a run that publishes that day anew), and its ledger row becomes
``retracted``. The ``_latest`` views then show what was there before (the
entity's previous as_of). A run whose rows are not visible (failed, replaced by
a later run, already retracted) cannot be retracted: nothing would change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from batch_scorer.errors import UsageError
from batch_scorer.names import split_table_name
from batch_scorer.storage import ledger, profiles
from batch_scorer.storage.db import begin_write
from batch_scorer.storage.schema import RunStatus
from batch_scorer.storage.views import shadow_table_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retracted:
    """What a retract removed."""

    run_id: int
    job: str
    as_of: object
    output_table: str
    rows: int
    shadow_rows: int
    metric_rows: int = 0


def retract(engine: Engine, run_id: int, note: str | None = None) -> Retracted:
    """Retract a succeeded run (module doc); raises :class:`UsageError` for any other."""
    with begin_write(engine) as conn:
        run = ledger.get_run(conn, run_id)
        if run is None:
            raise UsageError(f"run {run_id} is not in the scoring_runs ledger (batch-scorer runs lists runs)")
        if run.status != RunStatus.SUCCEEDED or run.replaced_by is not None or not run.output_table:
            raise UsageError(
                f"run {run_id} (job {run.job}, as_of {run.as_of}) is {run.status}"
                f"{f' and was replaced by run {run.replaced_by}' if run.replaced_by else ''}: only the rows of "
                f"a succeeded run that no later run replaced are visible, so there is nothing to retract. "
                + _instead(conn, run)
            )
        rows = _delete(conn, run.output_table, run_id)
        shadow = _delete(conn, shadow_table_name(run.output_table), run_id)
        metrics = profiles.delete_metrics(conn, run.job, run.as_of)
        ledger.mark_retracted(conn, run_id, f"retracted: {note}" if note else "retracted by an operator")
    log.info("job %s: retracted run %d (as_of %s): %d rows removed from %s, %d model_metrics rows of that as_of",
             run.job, run_id, run.as_of, rows, run.output_table, metrics)
    return Retracted(run_id, run.job, run.as_of, run.output_table, rows, shadow, metrics)


def _instead(conn: Connection, run: ledger.RunRecord) -> str:
    """What to do instead: retract the run whose rows readers see for that as_of, if any."""
    shown = ledger.replaced_runs(conn, run.job, run.as_of, run.run_id, run.output_table)
    if shown:
        return (f"The rows readers see for job {run.job}, as_of {run.as_of} are run {max(shown)}'s: "
                f"`batch-scorer retract {max(shown)}` takes those back.")
    return f"`batch-scorer runs --job {run.job}` lists the job's runs and which are published."


def _delete(conn: Connection, name: str, run_id: int) -> int:
    schema, table = split_table_name(name)
    if not sa.inspect(conn).has_table(table, schema=schema):
        return 0
    t = sa.Table(table, sa.MetaData(), sa.Column("run_id", sa.BigInteger), schema=schema)
    return int(conn.execute(sa.delete(t).where(t.c.run_id == run_id)).rowcount or 0)
