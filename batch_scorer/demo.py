"""``batch-scorer demo``: a small fleet scored end to end.

The repository's ``config.yaml`` defines it: ``churn`` (a classifier) and ``ltv``
(a regressor), each a matrix over five countries (ten jobs, one model file per
country, each reading only its country's rows), and ``retention``, which runs
after them (``after:``) and scores what they published. The demo writes a
customer feature table with a daily snapshot for each of the last
:data:`DAYS` days up to today (in the configured timezone, so ``batch-scorer
run churn`` and a backfill over those days work right after it), trains the
eleven models once, and runs every job through the same code as ``batch-scorer
run --all``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta
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
from batch_scorer.dates import today
from batch_scorer.errors import ConfigError
from batch_scorer.runtime.outcome import RunResults
from batch_scorer.storage.db import engine_for

log = logging.getLogger(__name__)

FEATURE_TABLE = "customer_features"
N_CUSTOMERS = 20_000
DAYS = 7
COUNTRIES = ("DE", "FR", "NL", "ES", "IT")
NUMERIC = ["tenure_months", "monthly_charges", "total_charges", "support_calls", "days_since_login"]
CATEGORICAL = ["plan"]
DEMO_JOBS = ("churn", "ltv", "retention")


@dataclass(frozen=True)
class DemoResult:
    """What the demo did and a peek at the result."""

    database: str
    feature_rows: int
    days: tuple[date, date]
    results: RunResults
    sample: pd.DataFrame
    queries: tuple[str, ...]


def snapshot_dates(last: date, days: int = DAYS) -> list[date]:
    """The demo's daily snapshots, oldest first, ending on ``last``."""
    return [last - timedelta(days=days - 1 - i) for i in range(days)]


def make_features(last: date, n_customers: int = N_CUSTOMERS, seed: int = 7) -> pd.DataFrame:
    """A customer feature table: numeric and categorical columns, NULLs, one snapshot a day."""
    rng = np.random.default_rng(seed)
    country = rng.choice(COUNTRIES, n_customers).astype(object)
    base_tenure = rng.integers(0, 72, n_customers)
    frames = []
    for i, snap in enumerate(snapshot_dates(last)):
        n = n_customers
        monthly = rng.normal(65, 25, n).clip(10, 200).round(2)
        tenure = base_tenure + i // 30
        total = (monthly * tenure).round(2)
        total[rng.random(n) < 0.03] = np.nan
        frame = pd.DataFrame({
            "customer_id": np.arange(1, n + 1, dtype="int64"),
            "snapshot_date": [snap] * n,
            "country": country,
            "tenure_months": tenure.astype("int64"),
            "monthly_charges": monthly,
            "total_charges": total,
            "support_calls": rng.poisson(1.5, n).astype("int64"),
            "days_since_login": np.where(rng.random(n) < 0.05, np.nan, rng.exponential(12, n).round(1)),
            "plan": rng.choice(["basic", "standard", "premium"], n, p=[0.5, 0.35, 0.15]).astype(object),
        })
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
    categorical = Pipeline([
        ("impute", SimpleImputer(strategy="constant", fill_value="missing")),
        ("onehot", OneHotEncoder(handle_unknown="ignore")),
    ])
    return ColumnTransformer([("num", numeric, NUMERIC), ("cat", categorical, CATEGORICAL)])


def train_models(features: pd.DataFrame) -> dict[str, Pipeline]:
    """Per country a churn classifier and a lifetime-value regressor (full Pipelines), and
    one retention model scoring the value at risk from what those two predict."""
    first = features[features["snapshot_date"] == features["snapshot_date"].min()]
    models: dict[str, Pipeline] = {}
    at_risk = []
    for country in COUNTRIES:
        train = first[first["country"] == country]
        X = train[NUMERIC + CATEGORICAL]
        churned, ltv = _labels(train)
        churn = Pipeline([("prep", _preprocess()), ("clf", LogisticRegression(max_iter=500))]).fit(X, churned)
        value = Pipeline([("prep", _preprocess()), ("reg", Ridge(alpha=1.0))]).fit(X, ltv)
        models[f"churn_{country}"], models[f"ltv_{country}"] = churn, value
        at_risk.append(pd.DataFrame({"churn_score": churn.predict_proba(X)[:, 1], "ltv": value.predict(X)}))
    inputs = pd.concat(at_risk, ignore_index=True)
    target = inputs["churn_score"] * inputs["ltv"]
    models["retention"] = Pipeline([("scale", StandardScaler()), ("reg", Ridge(alpha=1.0))]).fit(inputs, target)
    return models


def _write_features(engine: sa.Engine, features: pd.DataFrame) -> int:
    """The demo's feature table, written once a day (yesterday's demo table is rewritten)."""
    insp = sa.inspect(engine)
    if insp.has_table(FEATURE_TABLE):
        if set(c["name"] for c in insp.get_columns(FEATURE_TABLE)) != set(features.columns):
            raise ConfigError(
                f"demo: table {FEATURE_TABLE!r} already exists and the demo did not write it; point "
                "database.url at another database to run the demo."
            )
        with engine.connect() as conn:
            last = conn.execute(sa.text(f"SELECT max(snapshot_date) FROM {FEATURE_TABLE}")).scalar()  # noqa: S608
        if str(last)[:10] == str(features["snapshot_date"].max()):
            log.info("demo: %s already holds today's snapshot; keeping it", FEATURE_TABLE)
            return len(features)
    dtypes = {"snapshot_date": sa.Date(), "plan": sa.Text(), "country": sa.Text()}
    method = _copy_rows if engine.dialect.name == "postgresql" else None
    with engine.begin() as conn:
        if insp.has_table(FEATURE_TABLE):
            conn.execute(sa.text(f"DELETE FROM {FEATURE_TABLE}"))  # noqa: S608 - the demo's own table
        features.to_sql(FEATURE_TABLE, conn, index=False, chunksize=20_000, dtype=dtypes, if_exists="append",
                        method=method)
        conn.execute(sa.text(
            "CREATE INDEX IF NOT EXISTS ix_customer_features_snapshot ON customer_features (snapshot_date, country)"
        ))
    return len(features)


def _copy_rows(table: object, conn: sa.Connection, keys: list[str], rows: object) -> None:
    """pandas ``to_sql`` through PostgreSQL's COPY (row-by-row INSERTs took a minute)."""
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    prep = conn.dialect.identifier_preparer
    columns = ", ".join(prep.quote(k) for k in keys)
    with dbapi.cursor() as cur:
        if hasattr(cur, "copy"):  # psycopg 3
            with cur.copy(f"COPY {prep.quote(table.name)} ({columns}) FROM STDIN") as copy:
                for row in rows:  # type: ignore[attr-defined]
                    copy.write_row(row)
        else:  # psycopg2
            import io

            buf = io.StringIO()
            pd.DataFrame(list(rows)).to_csv(buf, index=False, header=False)  # type: ignore[call-overload]
            buf.seek(0)
            cur.copy_expert(f"COPY {prep.quote(table.name)} ({columns}) FROM STDIN WITH CSV", buf)


def _save_models(cfg: Config, features: pd.DataFrame) -> None:
    models = None
    for name in cfg.select(list(DEMO_JOBS)):
        path = Path(cfg.job(name).model.path or "")
        if not path.exists():
            models = models or train_models(features)
            path.parent.mkdir(parents=True, exist_ok=True)
            joblib.dump(models[path.stem], path)
            log.info("demo: trained and saved %s", path)


def run_demo(config: api.ConfigLike = None) -> DemoResult:
    """Build the demo data and models, then score every demo job (module doc)."""
    cfg: Config = api.as_config(config)
    names = cfg.select(list(DEMO_JOBS))
    last = today(cfg.timezone)
    features = make_features(last)
    with engine_for(cfg.database.require_url(), cfg.database.busy_timeout_seconds) as engine:
        rows = _write_features(engine, features)
    _save_models(cfg, features)
    results = api.run(cfg, names, as_of=last)
    queries = (
        "SELECT * FROM predictions_latest ORDER BY score DESC LIMIT 5;",
        "SELECT * FROM predictions_daily;",
        "SELECT run_id, job, status, rows_scored FROM scoring_runs_bi ORDER BY run_id DESC;",
    )
    with engine_for(cfg.database.require_url(), cfg.database.busy_timeout_seconds) as engine:
        sample = pd.DataFrame()
        if sa.inspect(engine).has_table("retention_priority"):
            sample = pd.read_sql(sa.text(
                "SELECT job, customer_id, as_of, prediction AS value_at_risk, country "
                "FROM retention_priority_latest ORDER BY prediction DESC LIMIT 5"), engine)
        url = engine.url
    database = url.database if url.get_backend_name() == "sqlite" else url.render_as_string(hide_password=True)
    first = snapshot_dates(last)[0]
    return DemoResult(str(database), rows, (first, last), results, sample, queries)
