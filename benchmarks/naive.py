"""The script users write before they have batch-scorer (the baseline of issue 4).

    python benchmarks/naive.py URL MODEL TABLE OUT_TABLE AS_OF

``pd.read_sql`` the whole table, ``predict_proba``, ``DataFrame.to_sql`` with
pandas' default method. Run as its own process by ``bench_scoring.py`` so that
its peak RSS is measured alone.
"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime

import joblib
import numpy as np
import pandas as pd
import sqlalchemy as sa


def main(url: str, model_path: str, table: str, out: str, as_of: str) -> None:
    engine = sa.create_engine(url)
    model = joblib.load(model_path)
    features = list(model.feature_names_in_)
    with engine.connect() as conn:
        df = pd.read_sql(sa.text(f"SELECT * FROM {table}"), conn)
    proba = model.predict_proba(df[features])
    result = pd.DataFrame(
        {
            "entity_id": df["entity_id"],
            "as_of": date.fromisoformat(as_of),
            "model_version": "naive",
            "scored_at": datetime.now(UTC),
            "prediction": np.asarray(model.classes_)[proba.argmax(axis=1)],
            "score": proba[:, 1],
        }
    )
    with engine.begin() as conn:
        result.to_sql(out, conn, if_exists="replace", index=False)
    engine.dispose()


if __name__ == "__main__":
    main(*sys.argv[1:6])
