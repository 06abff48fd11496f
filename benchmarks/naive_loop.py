"""The loop users write for a fleet before they have batch-scorer (the baseline of the fleet benchmark).

    python benchmarks/naive_loop.py URL MODEL_FOLDER TABLE OUT_TABLE

One Python process, one engine, looping over the 10 x 20 (model, country)
pairs: ``pd.read_sql`` with a WHERE on the country, ``predict_proba``,
``DataFrame.to_sql`` (append) with pandas' default method.
"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import sqlalchemy as sa

MODELS = [f"m{i}" for i in range(10)]
COUNTRIES = [f"C{i:02d}" for i in range(20)]


def main(url: str, folder: str, table: str, out: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {out}")
    for m in MODELS:
        for c in COUNTRIES:
            model = joblib.load(Path(folder) / f"{m}_{c}.joblib")
            features = list(model.feature_names_in_)
            with engine.connect() as conn:
                df = pd.read_sql(sa.text(f"SELECT * FROM {table} WHERE country = :c"), conn, params={"c": c})
            proba = model.predict_proba(df[features])
            result = pd.DataFrame({
                "job": f"{m}.{c}",
                "entity_id": df["entity_id"],
                "as_of": date(2026, 3, 31),
                "model_version": "naive",
                "scored_at": datetime.now(UTC),
                "prediction": np.asarray(model.classes_)[proba.argmax(axis=1)],
                "score": proba[:, 1],
                "country": c,
            })
            with engine.begin() as conn:
                result.to_sql(out, conn, if_exists="append", index=False)
    engine.dispose()


if __name__ == "__main__":
    main(*sys.argv[1:5])
