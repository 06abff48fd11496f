"""``batch-scorer demo``: a realistic feature table, two trained models, two runs.

Everything goes through the same code path as ``batch-scorer run``, driven by
the repository's ``config.yaml`` (SQLite by default).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import sqlalchemy as sa
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from batch_scorer import api
from batch_scorer.config import Config
from batch_scorer.errors import ConfigError
from batch_scorer.runtime.outcome import RunResult
from batch_scorer.storage.db import engine_for

log = logging.getLogger(__name__)

FEATURE_TABLE = "customer_features"
N_CUSTOMERS = 40_000
SNAPSHOTS = (date(2026, 1, 31), date(2026, 2, 28), date(2026, 3, 31))
NUMERIC = ["tenure_months", "monthly_charges", "total_charges", "support_calls", "days_since_login"]
CATEGORICAL = ["plan", "country"]
DEMO_JOBS = ("churn", "ltv")


@dataclass(frozen=True)
class DemoResult:
    """What the demo did and a peek at the result."""

    database: str
    feature_rows: int
    results: list[RunResult]
    sample: pd.DataFrame
    queries: tuple[str, ...]


def make_features(n_customers: int = N_CUSTOMERS, seed: int = 7) -> pd.DataFrame:
    """A customer feature table: numeric and categorical columns, NULLs, several snapshots."""
    rng = np.random.default_rng(seed)
    frames = []
    for i, snap in enumerate(SNAPSHOTS):
        n = n_customers
        tenure = rng.integers(0, 72, n) + i
        monthly = rng.normal(65, 25, n).clip(10, 200).round(2)
        total = (monthly * tenure).round(2)
        total[rng.random(n) < 0.03] = np.nan
        frame = pd.DataFrame(
            {
                "customer_id": np.arange(1, n + 1, dtype="int64"),
                "snapshot_date": [snap] * n,
                "tenure_months": tenure.astype("int64"),
                "monthly_charges": monthly,
                "total_charges": total,
                "support_calls": rng.poisson(1.5, n).astype("int64"),
                "days_since_login": np.where(rng.random(n) < 0.05, np.nan, rng.exponential(12, n).round(1)),
                "plan": rng.choice(["basic", "standard", "premium"], n, p=[0.5, 0.35, 0.15]).astype(object),
                "country": rng.choice(["DE", "FR", "NL", "ES", "IT"], n).astype(object),
            }
        )
        frame.loc[rng.random(n) < 0.02, "plan"] = None
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _labels(features: pd.DataFrame, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logit = (
        -1.0
        - 0.04 * features["tenure_months"].to_numpy()
        + 0.02 * (features["monthly_charges"].to_numpy() - 65)
        + 0.45 * features["support_calls"].to_numpy()
        + 0.03 * np.nan_to_num(features["days_since_login"].to_numpy(), nan=12.0)
        + np.where(features["plan"].to_numpy() == "basic", 0.6, 0.0)
    )
    churned = (rng.random(len(features)) < 1 / (1 + np.exp(-logit))).astype("int64")
    ltv = (
        features["monthly_charges"].to_numpy() * (24 - 0.2 * features["support_calls"].to_numpy())
        + rng.normal(0, 50, len(features))
    )
    return churned, ltv


def _preprocess() -> ColumnTransformer:
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value="missing")),
            ("onehot", OneHotEncoder(handle_unknown="ignore")),
        ]
    )
    return ColumnTransformer([("num", numeric, NUMERIC), ("cat", categorical, CATEGORICAL)])


def train_models(features: pd.DataFrame) -> dict[str, Pipeline]:
    """A churn classifier and a lifetime-value regressor, both full Pipelines."""
    train = features[features["snapshot_date"] == SNAPSHOTS[0]]
    X = train[NUMERIC + CATEGORICAL]
    churned, ltv = _labels(train)
    churn = Pipeline([("prep", _preprocess()), ("clf", LogisticRegression(max_iter=500))]).fit(X, churned)
    value = Pipeline([("prep", _preprocess()), ("reg", Ridge(alpha=1.0))]).fit(X, ltv)
    return {"churn": churn, "ltv": value}


def _write_features(engine: sa.Engine, features: pd.DataFrame) -> int:
    insp = sa.inspect(engine)
    if insp.has_table(FEATURE_TABLE):
        with engine.connect() as conn:
            count = conn.execute(
                sa.select(sa.func.count()).select_from(sa.table(FEATURE_TABLE))
            ).scalar_one()
        if count == len(features):
            log.info("demo: %s already holds %d rows; keeping it", FEATURE_TABLE, count)
            return int(count)
        raise ConfigError(
            f"demo: table {FEATURE_TABLE!r} already exists with {count} rows that the demo did "
            "not write; point database.url at another database to run the demo."
        )
    dtypes = {"snapshot_date": sa.Date(), "plan": sa.Text(), "country": sa.Text()}
    with engine.begin() as conn:
        features.to_sql(FEATURE_TABLE, conn, index=False, chunksize=20_000, dtype=dtypes)
        conn.execute(
            sa.text(
                "CREATE INDEX IF NOT EXISTS ix_customer_features_snapshot "
                "ON customer_features (snapshot_date)"
            )
        )
    return len(features)


def run_demo(config: api.ConfigLike = None) -> DemoResult:
    """Build the demo data and models, then score them with the config's jobs."""
    cfg: Config = api.as_config(config)
    for name in DEMO_JOBS:
        cfg.job(name)
    features = make_features()
    with engine_for(cfg.database.require_url(), cfg.database.busy_timeout_seconds) as engine:
        rows = _write_features(engine, features)
    models = None
    for name in DEMO_JOBS:
        path = Path(cfg.job(name).model.path)
        if not path.exists():
            models = models or train_models(features)
            path.parent.mkdir(parents=True, exist_ok=True)
            joblib.dump(models[name], path)
            log.info("demo: trained and saved %s", path)
    as_of = SNAPSHOTS[-1]
    results = api.run(cfg, list(DEMO_JOBS), as_of=as_of)
    queries = (
        "SELECT * FROM predictions_latest ORDER BY score DESC LIMIT 5;",
        "SELECT job, as_of, model_version, count(*) FROM predictions GROUP BY 1, 2, 3;",
        "SELECT run_id, job, status, rows_scored FROM scoring_runs ORDER BY run_id DESC;",
    )
    with engine_for(cfg.database.require_url(), cfg.database.busy_timeout_seconds) as engine:
        sample = pd.read_sql(
            sa.text(
                "SELECT job, customer_id, as_of, model_version, prediction, score, country "
                "FROM predictions_latest ORDER BY score DESC LIMIT 5"
            ),
            engine,
        ) if sa.inspect(engine).has_table("predictions") else pd.DataFrame()
    url = engine.url
    database = url.database if url.get_backend_name() == "sqlite" else url.render_as_string(hide_password=True)
    return DemoResult(str(database), rows, results, sample, queries)

