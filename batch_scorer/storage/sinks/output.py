"""Output tables: prepared (created if missing, checked if not) and the rows a run writes.

An :class:`OutputSpec` is one table a run writes with the run's constants (job,
as_of, model version, run id, scored_at, and ``challenger`` for a shadow
table). What varies per row (keys, pass-through columns, prediction, score) is
an *output frame*: :func:`output_frame` builds it from scored source rows, and a
process that scored rows elsewhere (a Dask worker) hands back exactly that
frame.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch_scorer.errors import SourceError
from batch_scorer.storage.catalog import catalog
from batch_scorer.storage.columns import exact_column
from batch_scorer.storage.ddl import check_view_names, ensure_output, ensure_table, missing_objects
from batch_scorer.storage.schema import output_table

KIND_TYPES: dict[str, sa.types.TypeEngine[Any]] = {
    "text": sa.Text(),
    "integer": sa.BigInteger(),
    "boolean": sa.Boolean(),
    "float": sa.Float(53),
}


@dataclass(frozen=True)
class OutputSpec:
    """One table a run writes, with the constants every row of the run carries."""

    table: sa.Table
    constants: Mapping[str, Any]
    keys: tuple[str, ...]
    unique_keys: bool = True

    @property
    def row_columns(self) -> list[str]:
        """The columns an output frame holds (what varies per row), in table order."""
        return [c.name for c in self.table.columns if c.name not in self.constants]


@dataclass(frozen=True)
class PreparedTable:
    """An output table as a job sees it: its definition and whether its key index is unique."""

    table: sa.Table
    unique_keys: bool


def output_frame(
    rows: pd.DataFrame, row_columns: Sequence[str], prediction: np.ndarray, score: np.ndarray | None
) -> pd.DataFrame:
    """The per-row output columns of one scored chunk (keys and pass-through columns exact)."""
    n = len(rows)
    cols: dict[str, Any] = {}
    for name in row_columns:
        if name == "prediction":
            cols[name] = prediction
        elif name == "score":
            cols[name] = score if score is not None else np.full(n, np.nan)
        else:
            # .array: positional (no index alignment) and zero-copy, keeping
            # Arrow-backed exact columns exact.
            cols[name] = exact_column(rows, name).array
    return pd.DataFrame(cols, copy=False)


def _family(t: sa.types.TypeEngine[Any]) -> str:
    if isinstance(t, sa.Boolean):
        return "boolean"
    if isinstance(t, sa.Integer):
        return "integer"
    if isinstance(t, sa.Float | sa.Numeric):
        return "float"
    if isinstance(t, sa.String):
        return "text"
    return "other"


def define_output(
    name: str,
    keys: Sequence[tuple[str, sa.types.TypeEngine[Any]]],
    pass_through: Sequence[tuple[str, sa.types.TypeEngine[Any]]],
    prediction_kind: str,
    shadow: bool = False,
) -> sa.Table:
    """The table a job wants: keys and pass-through columns with the source's types."""
    return output_table(name, keys, pass_through, KIND_TYPES[prediction_kind], shadow=shadow)


def prepare_output_table(
    engine: Engine, wanted: sa.Table, prediction_kind: str, job: str, classifier: bool, *,
    create: bool, shadow: bool = False,
) -> PreparedTable:
    """Create the output table (and its views; a shadow table has none) if missing and
    ``create``; check that it fits the job. ``classifier``: the form of a ``_daily`` view
    it creates (counts per prediction, or a regressor's numbers).

    With ``create=False`` nothing is written: a missing table is fine (the run
    will create it) and an existing one is checked.
    """
    if create and shadow:
        ensure_table(engine, wanted)
    elif create:
        ensure_output(engine, wanted, _key_names(wanted), classifier)
    else:
        if not shadow:
            check_view_names(engine, wanted, _key_names(wanted), classifier)
        if not catalog(engine).has_table(wanted.name, wanted.schema):
            return PreparedTable(wanted, True)
    actual = catalog(engine).table(wanted.name, wanted.schema)
    _check_fits(actual, wanted, prediction_kind, job)
    return PreparedTable(wanted, _has_unique_key_index(actual, wanted))


def missing(engine: Engine, wanted: sa.Table, classifier: bool) -> list[str]:
    """The objects :func:`prepare_output_table` would create (read-only)."""
    return missing_objects(engine, wanted, _key_names(wanted), classifier)


_NON_KEYS = ("job", "as_of", "model_version", "run_id", "scored_at", "prediction", "score", "challenger")


def _key_names(table: sa.Table) -> list[str]:
    unique = next(ix for ix in table.indexes if ix.unique)
    return [c.name for c in unique.columns if c.name not in _NON_KEYS]


def _check_fits(actual: sa.Table, wanted: sa.Table, prediction_kind: str, job: str) -> None:
    name = wanted.name if wanted.schema is None else f"{wanted.schema}.{wanted.name}"
    lacking = [c.name for c in wanted.columns if c.name not in actual.c]
    if lacking:
        raise SourceError(
            f"job {job!r}: output table {name!r} exists but lacks column(s) {lacking}. "
            "Jobs that share an output table must fit its columns: add them "
            "(ALTER TABLE ... ADD COLUMN, as the table owner) or give the job its own "
            "output.table."
        )
    have = _family(actual.c.prediction.type)
    if not holds(have, prediction_kind):
        raise SourceError(
            f"job {job!r}: output table {name!r} has {'an' if have[0] in 'aeiou' else 'a'} {have} "
            "prediction column, but this "
            f"model predicts {prediction_kind} values. Give the job its own output.table."
        )


def holds(column_kind: str, value_kind: str) -> bool:
    """Whether a prediction column of ``column_kind`` holds predictions of ``value_kind``:
    its own kind; any kind in a text column (or one of a type we do not know); integers
    and booleans in a float column."""
    return column_kind in (value_kind, "text", "other") or (
        column_kind == "float" and value_kind in ("integer", "boolean"))


def widest_kind(kinds: Iterable[str]) -> str:
    """The prediction column kind that holds every kind of ``kinds`` (see :func:`holds`)."""
    found = set(kinds)
    if len(found) == 1:
        return found.pop()
    return "float" if found <= {"float", "integer", "boolean"} else "text"


def _has_unique_key_index(actual: sa.Table, wanted: sa.Table) -> bool:
    # Tables created before the key index was unique get their duplicate-key
    # check as a query at publish; newer ones by the index.
    key_index = next(ix for ix in wanted.indexes if ix.unique)
    cols = [c.name for c in key_index.columns]
    return any(ix.unique and [c.name for c in ix.columns] == cols for ix in actual.indexes)


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Plain Python values (None for NULL/NaN/NaT), one dict per row, for executemany."""
    names = list(frame.columns)
    lists = [python_values(frame[name]) for name in names]
    return [dict(zip(names, vals, strict=True)) for vals in zip(*lists, strict=True)]


def python_values(series: pd.Series) -> list[Any]:
    """A column as Python values, None for NULL, NaN and NaT."""
    if series.dtype.kind == "f":
        arr = series.to_numpy()
        out = arr.astype(object)
        out[~np.isfinite(arr)] = None
        return out.tolist()
    obj = series.astype(object)
    return obj.where(series.notna(), None).tolist()
