"""Test helpers: tiny real models, feature tables and config files.

No mocks: every test trains a small real scikit-learn model and scores it
against a real SQLite file or the real PostgreSQL server.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sqlalchemy as sa
import yaml
from click.testing import CliRunner, Result
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from batch_scorer.cli.main import cli, invoke
from batch_scorer.storage.db import create_engine

NUMERIC = ["x1", "x2", "x3"]
CATEGORICAL = ["color"]
FEATURES = NUMERIC + CATEGORICAL
AS_OF = date(2026, 3, 31)
OTHER_AS_OF = date(2026, 2, 28)


def features_frame(n: int = 500, seed: int = 0, as_of: date = AS_OF) -> pd.DataFrame:
    """A feature table with NULLs in numeric and categorical columns."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x1[rng.random(n) < 0.05] = np.nan
    frame = pd.DataFrame(
        {
            "entity_id": np.arange(1, n + 1, dtype="int64"),
            "region": rng.choice(["north", "south"], n).astype(object),
            "snapshot_date": [as_of] * n,
            "x1": x1,
            "x2": rng.normal(size=n),
            "x3": rng.integers(0, 10, n).astype("int64"),
            "color": rng.choice(["red", "green", "blue"], n).astype(object),
            "note": [f"n{i}" for i in range(n)],
        }
    )
    frame.loc[rng.random(n) < 0.05, "color"] = None
    return frame


def preprocessor(handle_unknown: str = "ignore") -> ColumnTransformer:
    """Impute and scale the numeric features, impute and one-hot the categorical one."""
    return ColumnTransformer(
        [
            ("num", Pipeline([("imp", SimpleImputer()), ("sc", StandardScaler())]), NUMERIC),
            (
                "cat",
                Pipeline(
                    [
                        ("imp", SimpleImputer(strategy="constant", fill_value="none")),
                        ("oh", OneHotEncoder(handle_unknown=handle_unknown)),
                    ]
                ),
                CATEGORICAL,
            ),
        ]
    )


def train(kind: str, frame: pd.DataFrame | None = None) -> Any:
    """A fitted Pipeline: ``binary``, ``multiclass``, ``regressor`` or ``forest``."""
    frame = frame if frame is not None else features_frame(400, seed=1)
    X = frame[FEATURES]
    signal = np.nan_to_num(frame["x1"].to_numpy()) + frame["x2"].to_numpy()
    if kind == "binary":
        return Pipeline([("prep", preprocessor()), ("m", LogisticRegression())]).fit(X, (signal > 0).astype(int))
    if kind == "multiclass":
        y = np.where(signal > 0.5, "high", np.where(signal < -0.5, "low", "mid"))
        return Pipeline([("prep", preprocessor()), ("m", LogisticRegression(max_iter=300))]).fit(X, y)
    if kind == "regressor":
        return Pipeline([("prep", preprocessor()), ("m", LinearRegression())]).fit(X, signal * 3 + 1)
    if kind == "forest":
        return Pipeline(
            [("prep", preprocessor()), ("m", RandomForestClassifier(n_estimators=10, random_state=0))]
        ).fit(X, (signal > 0).astype(int))
    raise ValueError(kind)


def save_model(model: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    return path


def load_table(url: str, frame: pd.DataFrame, table: str = "features", **dtype: Any) -> None:
    """Write a feature table with real SQL types (dates as DATE)."""
    engine = create_engine(url)
    try:
        dtypes = {"snapshot_date": sa.Date(), "color": sa.Text(), "region": sa.Text(), "note": sa.Text()}
        dtypes.update(dtype)
        with engine.begin() as conn:
            frame.to_sql(table, conn, index=False, if_exists="append",
                         dtype={k: v for k, v in dtypes.items() if k in frame.columns})
    finally:
        engine.dispose()


def job(
    model: str = "models/m.joblib",
    table: str | None = "features",
    query: str | None = None,
    key: list[str] | None = None,
    as_of_column: str | None = "snapshot_date",
    output: str = "predictions",
    pass_through: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One job's settings as the config file holds them."""
    source: dict[str, Any] = {"key": key or ["entity_id"]}
    if query is not None:
        source["query"] = query
    else:
        source["table"] = table
        if as_of_column:
            source["as_of_column"] = as_of_column
    out: dict[str, Any] = {"model": {"path": model}, "source": source,
                           "output": {"table": output, "pass_through": pass_through or []}}
    out.update(extra)
    return out


def write_config(
    folder: Path, url: str, jobs: Mapping[str, dict[str, Any]], **top: Any
) -> Path:
    """Write config.yaml into ``folder`` and return its path."""
    data: dict[str, Any] = {"database": {"url": url}, "timezone": "UTC", "jobs": dict(jobs)}
    data.update(top)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli_run(config: Path | None, *args: str, env: Mapping[str, str] | None = None) -> Result:
    """Run the CLI in-process the way a user would (exit code and output)."""
    argv = (["--config", str(config)] if config is not None else []) + list(args)
    return CliRunner().invoke(_Entry(), argv, env=dict(env or {}), catch_exceptions=False)


class _Entry:
    """Adapter so CliRunner goes through cli.invoke (the real error mapping)."""

    name = "batch-scorer"

    def main(self, args: list[str], prog_name: str | None = None, **kw: Any) -> None:
        sys.exit(invoke(cli, args))


def published(url: str, table: str = "predictions") -> pd.DataFrame:
    """Every row of an output table (what a BI reader sees)."""
    engine = create_engine(url)
    try:
        if not sa.inspect(engine).has_table(table):
            return pd.DataFrame()
        with engine.connect() as conn:
            return pd.read_sql(sa.text(f'SELECT * FROM "{table}"'), conn)
    finally:
        engine.dispose()


def query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Run one SQL query on a fresh connection and return all rows."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()
