"""Key-range partitions of one as_of's source rows, for reading them in parallel.

:func:`key_partitions` cuts the rows of an as_of into ranges of the key
columns, compared as row values (``(a, b) >= (x, y)``, lexicographic, the
order of a composite index on the keys, so the database can use one). The
boundaries are the first keys of ``ntile(n)`` over the keys, chosen from the
data, so the partitions hold about equally many rows. The ranges are
``[-inf, b1), [b1, b2), ..., [bk, +inf)``: every row with a complete key lies
in exactly one of them whatever the boundaries are; rows with a NULL in any key
column belong to the first partition only (they are read, and rejected, once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from batch_scorer.errors import UsageError
from batch_scorer.storage.sources.spec import SourceSpec
from batch_scorer.storage.sources.sql import select_rows, value_bind


@dataclass(frozen=True)
class Partition:
    """Partition ``index`` of ``count``: keys in ``[lower, upper)`` (None: open), plus NULL keys if ``nulls``."""

    index: int
    count: int
    lower: tuple[Any, ...] | None = None
    upper: tuple[Any, ...] | None = None
    nulls: bool = True

    def predicate(self, keys: Sequence[sa.ColumnElement[Any]]) -> sa.ColumnElement[bool]:
        """The condition on the key columns ``keys`` (in the spec's key order) selecting this partition."""
        parts: list[sa.ColumnElement[bool]] = [k.is_not(None) for k in keys]
        # Every key column NOT NULL first: (a, b) < (x, y) is true for a < x
        # even if b is NULL, which would put that row in two partitions.
        if self.lower is not None:
            parts.append(_row(keys) >= _values(self.lower))
        if self.upper is not None:
            parts.append(_row(keys) < _values(self.upper))
        ranged = sa.and_(*parts)
        if not self.nulls:
            return ranged
        return sa.or_(ranged, *(k.is_(None) for k in keys))


def _row(keys: Sequence[sa.ColumnElement[Any]]) -> sa.ColumnElement[Any]:
    return keys[0] if len(keys) == 1 else sa.tuple_(*keys)


def _values(values: tuple[Any, ...]) -> sa.ColumnElement[Any]:
    # Typed by the value (as the database returned it), not by the column: a
    # boundary goes back to the database exactly as it came.
    binds = [value_bind(v) for v in values]
    return binds[0] if len(binds) == 1 else sa.tuple_(*binds)


def key_partitions(conn: Connection, spec: SourceSpec, as_of: date, n: int) -> list[Partition]:
    """At most ``n`` partitions covering ``as_of``'s source rows exactly once (at least one).

    Fewer than ``n`` when there are fewer distinct keys than partitions. Pass
    each to ``read_chunks(..., partition=p)`` or ``select_rows(..., partition=p)``.
    """
    if n < 1:
        raise UsageError(f"job {spec.job!r}: the number of partitions must be at least 1, not {n}")
    src = select_rows(conn, spec, as_of, spec.key).subquery("src")
    keys = [src.c[k] for k in spec.key]
    tiles = (
        sa.select(*keys, sa.func.ntile(n).over(order_by=keys).label("bs_tile"))
        .where(*(k.is_not(None) for k in keys))
        .subquery("tiles")
    )
    tile_keys = [tiles.c[k] for k in spec.key]
    firsts = sa.select(
        # Untyped: values come back as the driver gives them (SQLite's text as
        # stored), so binding them again compares exactly as the data sorts.
        *(sa.type_coerce(c, sa.types.NullType()).label(c.name) for c in tile_keys),
        tiles.c.bs_tile,
        sa.func.row_number().over(partition_by=tiles.c.bs_tile, order_by=tile_keys).label("bs_rank"),
    ).subquery("firsts")
    stmt = (
        sa.select(*(firsts.c[k] for k in spec.key))
        .where(firsts.c.bs_rank == 1, firsts.c.bs_tile > 1)
        .order_by(firsts.c.bs_tile)
    )
    bounds: list[tuple[Any, ...]] = []
    for row in conn.execute(stmt):
        if not bounds or tuple(row) != bounds[-1]:
            bounds.append(tuple(row))
    edges: list[tuple[Any, ...] | None] = [None, *bounds, None]
    count = len(edges) - 1
    return [Partition(i, count, edges[i], edges[i + 1], nulls=i == 0) for i in range(count)]
