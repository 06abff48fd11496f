"""What a run writes is what the model says: predict() exactly (a decision threshold
included), integer outputs stay integers, and validate names what kind of model it is."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.cluster import KMeans
from sklearn.model_selection import FixedThresholdClassifier

from tests.helpers import (
    AS_OF,
    FEATURES,
    NUMERIC,
    cli_run,
    features_frame,
    job,
    load_table,
    published,
    query,
    save_model,
    train,
    write_config,
)


class RoundedRegressor(RegressorMixin, BaseEstimator):
    """A custom regressor that predicts whole numbers (a count model)."""

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> RoundedRegressor:
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return np.round(np.nan_to_num(np.asarray(X["x3"], dtype=float))).astype("int64") * 3


def _run(tmp_path: Path, url: str, model: object, frame: pd.DataFrame, **job_kw: object) -> pd.DataFrame:
    load_table(url, frame)
    save_model(model, tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, url, {"j": job(**job_kw)})
    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 0, result.output
    return published(url).sort_values("entity_id").reset_index(drop=True)


def test_a_decision_threshold_is_what_gets_published(tmp_path: Path, db_url: str) -> None:
    frame = features_frame(400, seed=6)
    base = train("binary")
    strict = FixedThresholdClassifier(base, threshold=0.9).fit(frame[FEATURES], base.predict(frame[FEATURES]))
    out = _run(tmp_path, db_url, strict, frame)
    rows = frame.sort_values("entity_id")
    assert list(out["prediction"]) == list(strict.predict(rows[FEATURES]))
    assert (out["prediction"] != np.argmax(strict.predict_proba(rows[FEATURES]), axis=1)).any()  # it matters
    np.testing.assert_allclose(out["score"], strict.predict_proba(rows[FEATURES])[:, 1])  # P(classes_[1])


def test_cluster_labels_are_stored_as_integers_and_validate_calls_it_a_clusterer(
    tmp_path: Path, db_url: str
) -> None:
    frame = features_frame(200, seed=2).dropna(subset=NUMERIC)
    model = KMeans(3, n_init=2, random_state=0).fit(frame[NUMERIC])
    out = _run(tmp_path, db_url, model, frame, features=NUMERIC)
    assert list(out["prediction"]) == list(model.predict(frame.sort_values("entity_id")[NUMERIC]))
    cfg = tmp_path / "config.yaml"
    assert "clusterer" in cli_run(cfg, "validate").output
    assert _prediction_type(db_url) == "integer"


def test_a_regressor_that_predicts_whole_numbers_keeps_them_integer(tmp_path: Path, db_url: str) -> None:
    frame = features_frame(120, seed=4)
    model = RoundedRegressor().fit(frame[FEATURES], np.zeros(len(frame)))
    out = _run(tmp_path, db_url, model, frame)
    assert list(out["prediction"]) == list(model.predict(frame.sort_values("entity_id")[FEATURES]))
    assert _prediction_type(db_url) == "integer"


def _prediction_type(url: str) -> str:
    from batch_scorer.storage.db import create_engine

    engine = create_engine(url)
    try:
        col = next(c for c in sa.inspect(engine).get_columns("predictions") if c["name"] == "prediction")
    finally:
        engine.dispose()
    return "integer" if isinstance(col["type"], sa.Integer) else type(col["type"]).__name__


@pytest.mark.postgres
def test_rows_near_midnight_in_berlin_land_on_their_berlin_day(tmp_path: Path, pg_url: str) -> None:
    """A timestamptz as_of_column: days are cut in the configured time zone, not the session's."""
    tz = ZoneInfo("Europe/Berlin")
    frame = features_frame(12, seed=5)
    start = datetime(2026, 3, 30, 23, 0, tzinfo=tz)  # 23:00 .. 00:50 Berlin: two days
    frame["seen_at"] = [start + timedelta(minutes=10 * i) for i in range(12)]
    load_table(pg_url, frame.drop(columns=["snapshot_date"]), seen_at=sa.DateTime(timezone=True))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    # The session's time zone is the server's (UTC here): cut there, all 12 rows would be 03-30.
    cfg = write_config(tmp_path, pg_url, {"j": job(as_of_column="seen_at")}, timezone="Europe/Berlin")
    for day in ("2026-03-30", "2026-03-31"):
        assert cli_run(cfg, "run", "j", "--as-of", day).exit_code == 0
    counts = dict(query(pg_url, "SELECT CAST(as_of AS TEXT), count(*) FROM predictions GROUP BY 1"))
    assert counts == {"2026-03-30": 6, "2026-03-31": 6}
