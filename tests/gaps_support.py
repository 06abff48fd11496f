"""Small helpers for the tests/test_gaps_*.py files: snapshots of what a reader and the
ledger see, to prove a refused command changed nothing, and polling without fixed sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from batch_scorer.storage.db import create_engine
from tests.helpers import FEATURES, features_frame, preprocessor, save_model

LEDGER_COLUMNS = ("run_id, job, CAST(as_of AS TEXT), status, replaced_by, rows_read, rows_scored, "
                  "rows_rejected, output_table, error")


def save_strict_model(path: Path) -> Path:
    """A real model that raises on predict for any color but red (``handle_unknown='error'``):
    rows of another color are rows it cannot score."""
    seen = features_frame(300, seed=1)
    seen = seen[seen["color"] == "red"]
    strict = Pipeline([("prep", preprocessor(handle_unknown="error")), ("m", LogisticRegression())])
    return save_model(strict.fit(seen[FEATURES], (seen["x2"] > 0).astype(int)), path)


def has_table(url: str, name: str) -> bool:
    """Whether the database at ``url`` has a table or view called ``name``."""
    engine = create_engine(url)
    try:
        inspector = sa.inspect(engine)
        return inspector.has_table(name) or name in inspector.get_view_names()
    finally:
        engine.dispose()


def rows_of(url: str, table: str, order: str = "run_id, entity_id") -> list[tuple[Any, ...]]:
    """Every row of a (quoted) table or view, in a stable order; [] if it does not exist."""
    if not has_table(url, table):
        return []
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(f'SELECT * FROM "{table}" ORDER BY {order}'))]  # noqa: S608
    finally:
        engine.dispose()


def ledger(url: str) -> list[tuple[Any, ...]]:
    """The ledger's rows (the columns a command could change), by run_id."""
    return rows_of_query(url, f"SELECT {LEDGER_COLUMNS} FROM scoring_runs ORDER BY run_id")  # noqa: S608


def rows_of_query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """All rows of one query on a fresh connection."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


def statuses(url: str) -> dict[str, list[str]]:
    """Each job's ledger statuses, oldest first."""
    out: dict[str, list[str]] = {}
    for job, status in rows_of_query(url, "SELECT job, status FROM scoring_runs ORDER BY run_id"):
        out.setdefault(job, []).append(status)
    return out


def poll(condition: Callable[[], Any], timeout: float = 30.0, what: str = "the condition",
         alive: Callable[[], bool] | None = None, interval: float = 0.05) -> Any:
    """Call ``condition`` until it returns something truthy (returned); fail after ``timeout``
    or as soon as ``alive()`` says the process being watched has ended."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        if alive is not None and not alive():
            raise AssertionError(f"the process ended before {what}")
        time.sleep(interval)
