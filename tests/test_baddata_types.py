"""Database types reach the model as the types it was fitted on: PostgreSQL
``numeric`` (Decimal), nullable integers, booleans, dates and text categories."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from batch_scorer.models.features import NUMERIC, TEXT, coerce_features, fitted_kinds
from tests.helpers import AS_OF, cli_run, job, load_table, published, save_model, write_config

FEATURES = ["amount", "visits", "active", "plan", "signup"]


def signup_days(X: pd.DataFrame) -> np.ndarray:
    """Days since 2020 from a datetime64 column (fails on Python date objects)."""
    return (X["signup"] - pd.Timestamp("2020-01-01")).dt.days.to_numpy(dtype=float).reshape(-1, 1)


def _training(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "amount": rng.normal(100, 30, n).round(2),  # float64
            "visits": rng.integers(0, 20, n),  # int64
            "active": rng.random(n) < 0.5,  # bool
            "plan": rng.choice(["basic", "pro", "team"], n).astype(object),  # str
            "signup": pd.to_datetime("2021-01-01") + pd.to_timedelta(rng.integers(0, 1500, n), unit="D"),
        }
    )


def _model() -> Pipeline:
    frame = _training(400, seed=1)
    y = ((frame["amount"] > 100) ^ frame["active"]).astype(int)
    prep = ColumnTransformer(
        [
            ("num", Pipeline([("imp", SimpleImputer()), ("sc", StandardScaler())]), ["amount", "visits", "active"]),
            (
                "cat",
                Pipeline(
                    [("imp", SimpleImputer(strategy="constant", fill_value="missing")),
                     ("oh", OneHotEncoder(handle_unknown="ignore"))]
                ),
                ["plan"],
            ),
            ("date", FunctionTransformer(signup_days), ["signup"]),
        ]
    )
    return Pipeline([("prep", prep), ("m", LogisticRegression(max_iter=500))]).fit(frame[FEATURES], y)


def _source(n: int) -> pd.DataFrame:
    """What the database holds: numeric(12,2), integer and boolean with NULLs, text with NULLs, dates."""
    frame = _training(n, seed=7)
    source = pd.DataFrame(
        {
            "entity_id": np.arange(1, n + 1),
            "snapshot_date": [AS_OF] * n,
            "amount": [Decimal(f"{v:.2f}") for v in frame["amount"]],
            "visits": frame["visits"].astype(object),
            "active": frame["active"].astype(object),
            "plan": frame["plan"],
            "signup": [ts.date() for ts in frame["signup"]],
        }
    )
    source.loc[[3, 40], "visits"] = None
    source.loc[[5, 41], "active"] = None
    source.loc[[7], "plan"] = None
    return source


def test_database_types_reach_the_model_as_the_types_it_was_fitted_on(tmp_path: Path, db_url: str) -> None:
    model = _model()
    source = _source(150)
    load_table(
        db_url, source,
        amount=sa.Numeric(12, 2), visits=sa.Integer(), active=sa.Boolean(), plan=sa.Text(), signup=sa.Date(),
    )
    save_model(model, tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, db_url, {"j": job(pass_through=["amount", "signup"])})

    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())

    assert result.exit_code == 0, result.output
    assert "150 rows scored, 0 rejected" in result.output
    # The frame the model would see in a notebook: floats with NaN, datetime64, str.
    expected = pd.DataFrame(
        {
            "amount": source["amount"].astype(float),
            "visits": pd.to_numeric(source["visits"]).astype(float),
            "active": source["active"].map({True: 1.0, False: 0.0}).astype(float),
            "plan": source["plan"],
            "signup": pd.to_datetime(source["signup"]),
        }
    )
    out = published(db_url).sort_values("entity_id")
    np.testing.assert_allclose(out["score"].astype(float), model.predict_proba(expected)[:, 1], rtol=1e-9)
    assert list(out["prediction"]) == list(model.predict(expected))
    # Pass-through columns keep the source's values, not the model's view of them.
    assert [Decimal(str(v)).quantize(Decimal("0.01")) for v in out["amount"]] == list(source["amount"])
    assert [str(v)[:10] for v in out["signup"]] == [d.isoformat() for d in source["signup"]]


def test_fitted_kinds_are_read_from_encoders_imputers_and_numeric_estimators() -> None:
    kinds = fitted_kinds(_model(), FEATURES)
    assert kinds == {"amount": NUMERIC, "visits": NUMERIC, "active": NUMERIC, "plan": TEXT}


def test_text_categories_from_numeric_or_date_columns_become_their_text_form() -> None:
    frame = pd.DataFrame({"code": [7, None, 12], "day": [AS_OF, AS_OF, None]}, dtype=object)
    out, reasons = coerce_features(frame, {"code": TEXT, "day": TEXT})
    assert reasons is None
    # A NULL is NaN, as in every text feature (what read_sql gives a text column with a NULL).
    assert [v if isinstance(v, str) else "<NaN>" if isinstance(v, float) and np.isnan(v) else v
            for v in out["code"]] == ["7", "<NaN>", "12"]
    assert list(out["day"])[:2] == ["2026-03-31", "2026-03-31"] and np.isnan(out["day"].iloc[2])


def test_text_in_a_numeric_column_marks_only_that_row_and_never_echoes_the_value() -> None:
    frame = pd.DataFrame({"x": ["1.5", " 2 ", "", None, "secret-value", "NaN"]}, dtype=object)
    out, reasons = coerce_features(frame, {"x": NUMERIC})
    assert out["x"].tolist()[:2] == [1.5, 2.0]
    assert np.isnan(out["x"].tolist()[2:4]).all()
    assert reasons is not None
    assert list(reasons) == [None, None, None, None, "column 'x': not a number", None]


def test_text_converted_once_for_many_models_is_what_each_model_would_convert() -> None:
    """Read once, score many: a chunk's pandas ``str`` columns are made object arrays once
    (text_once); each model's own conversion then gives what it gives without that, for a
    model fitted on the column as text, as a number, or with no kinds at all."""
    from batch_scorer.models.features import text_once

    frame = pd.DataFrame({"plan": pd.array(["basic", None, "pro", "7"], dtype="str"),
                          "code": pd.array([" 7", "8", None, "x"], dtype="str"),
                          "blank": pd.array([None] * 4, dtype="str"),  # no value at all
                          "amount": [1.0, 2.0, np.nan, 4.0]})
    kinds = [{"plan": TEXT, "code": TEXT, "blank": TEXT, "amount": NUMERIC}, {"plan": TEXT, "code": NUMERIC}, {}]
    shared, ready = text_once(frame, kinds)
    assert ready == {"plan", "code"}  # "blank" is converted again by each model
    assert shared["plan"].dtype == object and shared["amount"].dtype == np.float64

    def exact(values: pd.Series) -> list[object]:  # None and NaN told apart: the models tell them apart
        return ["<None>" if v is None else "<NaN>" if isinstance(v, float) and np.isnan(v) else v
                for v in values.astype(object)]

    for k in kinds:
        alone, why_alone = coerce_features(frame, k)
        once, why_once = coerce_features(shared, k, ready)
        for name in frame.columns:
            assert exact(once[name]) == exact(alone[name]), (k, name)
        assert (why_alone is None) == (why_once is None)
        if why_alone is not None:
            assert list(why_alone) == list(why_once)


def test_a_null_text_feature_scores_the_same_whatever_rows_share_its_chunk(tmp_path: Path, db_url: str) -> None:
    """A NULL in a text feature reaches the model as NaN (what read_sql gives a text column),
    also in a chunk where that column has no value at all (SQLite hands those back as
    ``None``, which an imputer does not take as missing and an encoder sees as unknown): a
    row's score does not depend on its neighbours or the chunk size."""
    from sklearn.linear_model import Ridge

    colors = [None, None, "red", None, "blue", None]
    frame = pd.DataFrame({"entity_id": range(1, 7), "snapshot_date": AS_OF, "x1": [0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
                          "color": colors})
    load_table(db_url, frame)
    train_frame = pd.DataFrame({"x1": np.linspace(0, 3, 40),
                                "color": pd.array(["red", "blue", None, "green"] * 10, dtype="str")})
    y = train_frame["x1"] * 2 + (train_frame["color"].isna()).to_numpy() * 5.0
    model = Pipeline([
        ("prep", ColumnTransformer([
            ("num", "passthrough", ["x1"]),
            ("cat", Pipeline([("imp", SimpleImputer(strategy="constant", fill_value="none")),
                              ("oh", OneHotEncoder(handle_unknown="ignore"))]), ["color"]),
        ])),
        ("m", Ridge(alpha=0.01)),
    ]).fit(train_frame, y)
    save_model(model, tmp_path / "models" / "m.joblib")
    expected = model.predict(pd.DataFrame({"x1": frame["x1"], "color": pd.array(colors, dtype="str")}))
    assert expected[0] > 5.5 > 3.5 > expected[2]  # NULL imputed to 'none' (+5), not ignored as unknown
    for size in (2, 6):
        out = f"out_{size}"
        cfg = write_config(tmp_path, db_url, {"j": job(output=out, chunk_size=size)})
        assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
        got = published(db_url, out).sort_values("entity_id")
        assert np.allclose(got["prediction"].astype(float).to_numpy(), expected), size
