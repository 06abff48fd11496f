"""The views BI tools read, defined once: plain SELECTs a BI tool can wrap in a subquery.

* ``<output>_latest``: per job and entity, the latest as_of, and within it the
  one published run.
* ``<output>_daily``: per job, as_of and model version, how many rows and what
  they say: for classifiers one row per predicted class (rows, share, mean
  score), for regressors one row (rows, mean, min and max prediction). A
  dashboard reads this instead of pulling every row per visual.
* ``scoring_runs_bi``: the ledger without host, pid and error text.
* ``drift_latest``: per job, the drift rows of the latest as_of whose run is
  still published (succeeded, not replaced, not retracted).

Types are chosen for BI readers (ODBC, Npgsql): counts are BIGINT (PostgreSQL's
``sum(bigint)`` is NUMERIC, which Power BI and ODBC read as decimals) and means
are double precision whatever the prediction column's type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from batch_scorer.names import DAILY_SUFFIX, SHADOW_SUFFIX, latest_view_name, split_table_name
from batch_scorer.storage.schema import RunStatus, drift, scoring_runs

SCORING_RUNS_BI = "scoring_runs_bi"
DRIFT_LATEST = "drift_latest"
# Ledger columns BI may not see: where runs ran and what their errors say.
_PRIVATE_RUN_COLUMNS = ("host", "pid", "error")


def daily_view_name(output_name: str) -> str:
    """The ``_daily`` view of an output table (``schema.table`` keeps its schema)."""
    return output_name + DAILY_SUFFIX


def shadow_table_name(output_name: str) -> str:
    """The ``_shadow`` twin of an output table (challenger scores)."""
    return output_name + SHADOW_SUFFIX


def full_name(table: sa.Table) -> str:
    """``schema.table`` or ``table``: the name views are derived from."""
    return table.name if table.schema is None else f"{table.schema}.{table.name}"


def latest_view_select(table: sa.Table, keys: Sequence[str]) -> sa.Select[Any]:
    """Per job and entity: the latest as_of, and within it the latest run."""
    rn = (
        sa.func.row_number()
        .over(
            partition_by=[table.c.job, *(table.c[k] for k in keys)],
            order_by=[table.c.as_of.desc(), table.c.run_id.desc()],
        )
        .label("_rn")
    )
    ranked = sa.select(*table.c, rn).subquery("ranked")
    return sa.select(*(ranked.c[c.name] for c in table.c)).where(ranked.c._rn == 1)


def daily_view_select(table: sa.Table, classifier: bool) -> sa.Select[Any]:
    """Per job, as_of and model version: rows and what they predict (module doc)."""
    t = table.c
    day = [t.job, t.as_of, t.model_version]
    # Means need numbers: a text (or boolean) prediction column is counted per value.
    numeric = isinstance(t.prediction.type, sa.Integer | sa.Float | sa.Numeric)
    if not classifier and numeric:
        return sa.select(
            *day,
            sa.func.count().label("rows"),
            _mean(t.prediction).label("mean_prediction"),
            sa.func.min(t.prediction).label("min_prediction"),
            sa.func.max(t.prediction).label("max_prediction"),
            _mean(t.score).label("mean_score"),
        ).group_by(*day)
    counts = (
        sa.select(*day, t.prediction, sa.func.count().label("rows"), _mean(t.score).label("mean_score"))
        .group_by(*day, t.prediction)
        .subquery("per_class")
    )
    c = counts.c
    day_rows = sa.func.sum(c.rows).over(partition_by=[c.job, c.as_of, c.model_version])
    share = sa.cast(c.rows, _DOUBLE) / sa.cast(day_rows, _DOUBLE)
    return sa.select(c.job, c.as_of, c.model_version, c.prediction, c.rows,
                     share.label("share"), sa.cast(day_rows, sa.BigInteger).label("day_rows"), c.mean_score)


_DOUBLE = sa.Float(53)


def _mean(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    # avg(bigint) is NUMERIC on PostgreSQL: a BI tool would read a decimal.
    return sa.cast(sa.func.avg(column), _DOUBLE)


def scoring_runs_bi_select() -> sa.Select[Any]:
    """The ledger as BI may see it."""
    return sa.select(*(c for c in scoring_runs.c if c.name not in _PRIVATE_RUN_COLUMNS))


def drift_latest_select() -> sa.Select[Any]:
    """Per job, the drift rows of the latest as_of whose run is still published.

    Drift rows outlive their run: a re-run that replaced it, a retract, a
    backfill of an older as_of run later. Only a succeeded, unreplaced run's
    rows count, and "latest" is by as_of (then run_id), as in ``_latest``.
    """
    r = scoring_runs.c
    rank = (
        sa.func.rank()
        .over(partition_by=drift.c.job, order_by=[drift.c.as_of.desc(), drift.c.run_id.desc()])
        .label("_rank")
    )
    ranked = (
        sa.select(*drift.c, rank)
        .join(scoring_runs, r.run_id == drift.c.run_id)
        .where(r.status == RunStatus.SUCCEEDED.value, r.replaced_by.is_(None))
        .subquery("ranked")
    )
    return sa.select(*(ranked.c[c.name] for c in drift.c)).where(ranked.c._rank == 1)


def tool_views() -> dict[str, sa.Select[Any]]:
    """The views over the tool's own tables, by name."""
    return {SCORING_RUNS_BI: scoring_runs_bi_select(), DRIFT_LATEST: drift_latest_select()}


def output_view_names(table: sa.Table) -> list[str]:
    """The names of one output table's views (``schema.`` kept), as :func:`output_views` keys them."""
    name = full_name(table)
    return [latest_view_name(name), daily_view_name(name)]


def output_views(table: sa.Table, keys: Sequence[str], classifier: bool) -> dict[str, sa.Select[Any]]:
    """The views of one output table, by name (``schema.`` kept)."""
    latest, daily = output_view_names(table)
    return {latest: latest_view_select(table, keys), daily: daily_view_select(table, classifier)}


def create_view_sql(dialect: Dialect, view_name: str, select: sa.Select[Any]) -> str:
    """``CREATE VIEW`` text with a dialect-quoted name (never an f-string identifier)."""
    schema, name = split_table_name(view_name)
    prep = dialect.identifier_preparer
    quoted = prep.quote(name) if schema is None else f"{prep.quote_schema(schema)}.{prep.quote(name)}"
    body = select.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    return f"CREATE VIEW {quoted} AS {body}"
