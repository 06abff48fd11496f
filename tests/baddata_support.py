"""Shared set-up for the bad-data tests: a model that raises on unseen categories,
feature tables with planted bad rows, and readers of what a run left behind."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from batch_scorer.storage.db import create_engine
from tests.helpers import FEATURES, features_frame, preprocessor, query


def strict_model(frame: pd.DataFrame | None = None) -> Pipeline:
    """A binary classifier whose encoder raises on a category it has not seen."""
    frame = frame if frame is not None else features_frame(400, seed=1)
    prep = preprocessor(handle_unknown="error")
    y = (np.nan_to_num(frame["x1"].to_numpy()) + frame["x2"].to_numpy() > 0).astype(int)
    return Pipeline([("prep", prep), ("m", LogisticRegression())]).fit(frame[FEATURES], y)


def runs(url: str) -> list[dict[str, Any]]:
    """The ledger, oldest first."""
    engine = create_engine(url)
    try:
        if not sa.inspect(engine).has_table("scoring_runs"):
            return []
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT * FROM scoring_runs ORDER BY run_id"))
            return [dict(r._mapping) for r in rows]
    finally:
        engine.dispose()


def rejected(url: str, run_id: int | None = None) -> list[tuple[str, str]]:
    """``(key, reason)`` rows of ``rejected_rows`` (of one run if given), sorted."""
    sql = "SELECT key, reason FROM rejected_rows"
    if run_id is not None:
        return sorted(query(url, sql + " WHERE run_id = :r", r=run_id))
    return sorted(query(url, sql))


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        insp = sa.inspect(engine)
        return set(insp.get_table_names()) | set(insp.get_view_names())
    finally:
        engine.dispose()


def replace_table(url: str, frame: pd.DataFrame, table: str = "features", **dtype: Any) -> None:
    """Drop and re-create a feature table (a test's way to change the source)."""
    from tests.helpers import load_table

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}"'))
    finally:
        engine.dispose()
    load_table(url, frame, table, **dtype)


def nothing_to_hide(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked into: {text}"
