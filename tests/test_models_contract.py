"""What a model must be before a row is read: fitted, one prediction per row, as
many features as the job names, a readable file; what kind it is and the type of
its prediction column; and the one-row probe that catches what attributes hide."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.cluster import KMeans
from sklearn.ensemble import IsolationForest, RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import FixedThresholdClassifier
from sklearn.multiclass import OneVsRestClassifier
from sklearn.multioutput import MultiOutputClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from batch_scorer.errors import EXIT_BAD_INPUT, ModelError
from batch_scorer.models.loader import LoadedModel, load_model, load_model_bytes
from batch_scorer.models.scoring import prediction_kind, probe_model, score_prepared
from tests.baddata_support import strict_model, tables
from tests.helpers import (
    AS_OF,
    FEATURES,
    NUMERIC,
    cli_run,
    features_frame,
    job,
    load_table,
    preprocessor,
    save_model,
    train,
    write_config,
)


def _frame(n: int = 300) -> tuple[pd.DataFrame, np.ndarray]:
    frame = features_frame(n, seed=1)
    return frame[FEATURES], np.column_stack([frame["x2"], frame["x3"]])


def _pipe(final: Any) -> Pipeline:
    return Pipeline([("prep", preprocessor()), ("m", final)])


def _refused(tmp_path: Path, model: Any, **kw: Any) -> str:
    with pytest.raises(ModelError) as caught:
        load_model("j", save_model(model, tmp_path / "m.joblib"), **kw)
    assert caught.value.exit_code == EXIT_BAD_INPUT
    message = str(caught.value)
    assert message.startswith("job 'j': ")
    return message


def _multi_label() -> Any:
    X, Y = _frame()
    return _pipe(OneVsRestClassifier(LogisticRegression())).fit(X, (Y > 0).astype(int))


def _multi_output_classifier() -> Any:
    X, Y = _frame()
    return _pipe(MultiOutputClassifier(LogisticRegression())).fit(X, (Y > 0).astype(int))


def _forest_two_targets() -> Any:
    X, Y = _frame()
    return _pipe(RandomForestRegressor(n_estimators=3, random_state=0)).fit(X, Y)


def _linear_two_targets() -> Any:
    X, Y = _frame()
    return _pipe(LinearRegression()).fit(X, Y)


def _neighbours_two_targets() -> Any:
    X, Y = _frame()
    return _pipe(KNeighborsClassifier()).fit(X, (Y > 0).astype(int))


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (_multi_label, "OneVsRestClassifier was fitted on a multi-label indicator matrix"),
        (_multi_output_classifier, "MultiOutputClassifier has one classes_ array per target column"),
        (_forest_two_targets, "RandomForestRegressor was fitted on 2 target columns (n_outputs_ is 2)"),
        (_linear_two_targets, "LinearRegression was fitted on 2 target columns (coef_ has shape (2, 7))"),
        (_neighbours_two_targets, "KNeighborsClassifier was fitted on a 2-D target"),
    ],
    ids=["multi-label", "MultiOutputClassifier", "forest-2-targets", "linear-2-targets", "knn-2-targets"],
)
def test_models_predicting_several_values_per_row_are_refused_at_load(tmp_path: Path, make: Any, why: str) -> None:
    message = _refused(tmp_path, make())
    assert "predicts several values per row" in message and why in message
    assert "one prediction per row" in message


def test_a_one_column_2d_target_is_one_prediction_per_row(tmp_path: Path) -> None:
    X, Y = _frame()
    estimator = _pipe(LinearRegression()).fit(X, Y[:, :1])
    model = load_model("j", save_model(estimator, tmp_path / "m.joblib"))

    prediction, score = score_prepared(model, X)

    np.testing.assert_array_equal(prediction, estimator.predict(X)[:, 0])
    assert score is None


def test_a_multi_output_model_exits_2_before_anything_is_written(tmp_path: Path, sqlite_url: str) -> None:
    load_table(sqlite_url, features_frame(40, seed=3))
    save_model(_linear_two_targets(), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, sqlite_url, {"j": job()})

    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())

    assert result.exit_code == 2, result.output
    assert "Error: job 'j'" in result.output and "predicts several values per row" in result.output
    assert "Traceback" not in result.output
    assert tables(sqlite_url) == {"features"}  # not even a ledger row


def _scaler_not_fitted() -> Any:
    X, Y = _frame()
    fitted = LogisticRegression().fit(StandardScaler().fit_transform(X[NUMERIC].fillna(0)), Y[:, 0] > 0)
    return Pipeline([("scale", StandardScaler()), ("m", fitted)])


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda: LogisticRegression(), "unfitted LogisticRegression:"),
        (lambda: _pipe(LogisticRegression()), "unfitted ColumnTransformer (Pipeline step 'prep')"),
        (_scaler_not_fitted, "unfitted StandardScaler (Pipeline step 'scale')"),
        (lambda: FixedThresholdClassifier(LogisticRegression()), "unfitted FixedThresholdClassifier"),
    ],
    ids=["estimator", "pipeline", "pipeline-step", "meta-estimator"],
)
def test_unfitted_models_are_refused_at_load(tmp_path: Path, make: Any, what: str) -> None:
    message = _refused(tmp_path, make(), features=NUMERIC)
    assert what in message and "saved before fit() was called" in message


def test_a_features_list_of_another_length_than_the_model_was_fitted_on_is_refused(tmp_path: Path) -> None:
    frame = features_frame(100, seed=1).dropna(subset=NUMERIC)
    fitted_on_array = LogisticRegression().fit(frame[NUMERIC].to_numpy(), frame["x1"] > 0)

    message = _refused(tmp_path, fitted_on_array, features=["x1", "x2"])

    assert "the features: list names 2 columns" in message and "fitted on 3 features" in message
    assert load_model("j", tmp_path / "m.joblib", features=NUMERIC).features == tuple(NUMERIC)


# The one-row probe: what attributes do not show.


class TwoColumns(RegressorMixin, BaseEstimator):
    """A custom regressor that predicts two values per row (no attribute says so)."""

    def fit(self, X: Any, y: Any) -> TwoColumns:
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        return self

    def predict(self, X: Any) -> np.ndarray:
        return np.column_stack([X["x2"], X["x3"]])


class ListProba(ClassifierMixin, BaseEstimator):
    """A custom classifier whose predict_proba returns one array per output."""

    def fit(self, X: Any, y: Any) -> ListProba:
        self.inner_ = LogisticRegression().fit(X[["x2", "x3"]], y)
        self.classes_ = self.inner_.classes_
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        return self

    def predict(self, X: Any) -> np.ndarray:
        return self.inner_.predict(X[["x2", "x3"]])

    def predict_proba(self, X: Any) -> Any:
        proba = self.inner_.predict_proba(X[["x2", "x3"]])
        return [proba, proba] if self.shape == "list" else np.column_stack([proba, proba[:, :1]])

    shape = "list"


class WideProba(ListProba):
    shape = "wide"


class Wrapper(BaseEstimator):
    """A custom model around a scikit-learn one that was never fitted."""

    def __init__(self) -> None:
        self.inner = LogisticRegression()
        self.feature_names_in_ = np.asarray(FEATURES, dtype=object)

    def predict(self, X: Any) -> np.ndarray:
        return self.inner.predict(X[["x2", "x3"]])


class Rounding(RegressorMixin, BaseEstimator):
    """A custom regressor that predicts whole numbers."""

    def fit(self, X: Any, y: Any) -> Rounding:
        self.inner_ = LinearRegression().fit(X[["x2", "x3"]], y)
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        return self

    def predict(self, X: Any) -> np.ndarray:
        return np.rint(self.inner_.predict(X[["x2", "x3"]])).astype("int64")


def _one_row() -> pd.DataFrame:
    return features_frame(5, seed=2).dropna().iloc[:1]  # a raw source row: keys, pass-through, features


def _loaded(tmp_path: Path, estimator: Any) -> LoadedModel:
    return load_model("j", save_model(estimator, tmp_path / "m.joblib"))


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda X, y: TwoColumns().fit(X, y), "predict() returned shape (1, 2) for one row: 2 values per row"),
        (lambda X, y: ListProba().fit(X, y > 0), "predict_proba() returned a list of 2 arrays (one per output)"),
        (lambda X, y: WideProba().fit(X, y > 0), "predict_proba() returned shape (1, 3) for one row, not (1, 2)"),
        (lambda X, y: Wrapper(), "is not fitted"),
    ],
    ids=["two-columns", "list-proba", "wide-proba", "not-fitted-inside"],
)
def test_the_probe_row_refuses_a_model_broken_for_every_row(tmp_path: Path, make: Any, needle: str) -> None:
    X, Y = _frame()
    model = _loaded(tmp_path, make(X, Y[:, 0]))

    with pytest.raises(ModelError) as caught:
        probe_model("j", model, _one_row())

    assert str(caught.value).startswith("job 'j': ") and needle in str(caught.value)


def test_a_probe_row_the_model_cannot_score_is_not_a_model_error(tmp_path: Path) -> None:
    model = _loaded(tmp_path, strict_model())  # raises on a category it has not seen
    unseen = _one_row().assign(color="ultraviolet")
    text = _one_row().astype({"x2": object}).assign(x2="twelve")

    assert probe_model("j", model, unseen) == (None, "the model raised ValueError on the probe row")
    assert probe_model("j", model, text) == (None, "column 'x2': not a number")
    assert probe_model("j", model, _one_row()) == ("i", None)


@pytest.mark.parametrize(
    ("make", "kind", "dtype_kind", "column"),
    [
        (lambda X, y: train("binary"), "classifier", "i", "integer"),
        (lambda X, y: train("multiclass"), "classifier", "U", "text"),
        (lambda X, y: _pipe(LogisticRegression()).fit(X, y > 0), "classifier", "b", "boolean"),
        (lambda X, y: train("regressor"), "regressor", "f", "float"),
        (lambda X, y: Rounding().fit(X, y), "regressor", "i", "integer"),
        (lambda X, y: _pipe(KMeans(3, n_init=1, random_state=0)).fit(X), "clusterer", "i", "integer"),
        (lambda X, y: _pipe(IsolationForest(n_estimators=5, random_state=0)).fit(X), "other", "i", "integer"),
    ],
    ids=["binary", "multiclass-text", "boolean", "regressor", "integer-regressor", "kmeans", "outliers"],
)
def test_the_kind_and_the_prediction_column_follow_what_predict_returns(
    tmp_path: Path, make: Any, kind: str, dtype_kind: str, column: str
) -> None:
    X, Y = _frame()
    model = _loaded(tmp_path, make(X, Y[:, 0]))

    probe = probe_model("j", model, _one_row())

    assert model.kind == kind and model.describe_kind().startswith(kind if kind != "other" else "model that")
    assert probe == (dtype_kind, None)
    assert prediction_kind(model, probe.predict_dtype_kind) == column


def test_without_the_probe_prediction_kind_keeps_its_old_answers_and_clusterers_are_integer(tmp_path: Path) -> None:
    X, _ = _frame()
    assert prediction_kind(_loaded(tmp_path, train("regressor"))) == "float"
    assert prediction_kind(_loaded(tmp_path, train("multiclass"))) == "text"
    assert prediction_kind(_loaded(tmp_path, train("binary"))) == "integer"
    kmeans = _loaded(tmp_path, _pipe(KMeans(3, n_init=1, random_state=0)).fit(X))
    assert prediction_kind(kmeans) == "integer"
    assert kmeans.describe_kind() == "clusterer (it predicts cluster labels)"
    assert _loaded(tmp_path, train("binary")).describe_kind() == "classifier with 2 classes"


# Model files and bytes.


def _truncated(path: Path, compress: int) -> None:
    joblib.dump(train("forest"), path, compress=compress)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p.mkdir(), "is a directory, not a model file"),
        (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
        (lambda p: _truncated(p, 0), "it is truncated (it ends before the model does: ValueError)"),
        (lambda p: _truncated(p, 3), "it is truncated (it ends before the model does:"),
        (lambda p: p.write_bytes(b"not a pickle at all"), "The file may be corrupt or not a joblib/pickle file"),
        (lambda p: None, "not found"),
    ],
    ids=["directory", "empty", "truncated", "truncated-compressed", "garbage", "missing"],
)
def test_each_unreadable_model_file_gets_its_own_clear_error(tmp_path: Path, make: Any, needle: str) -> None:
    path = tmp_path / "m.joblib"
    make(path)

    with pytest.raises(ModelError) as caught:
        load_model("j", path)

    message = str(caught.value)
    assert message.startswith("job 'j': ") and str(path) in message and needle in message
    assert "EOFError: ." not in message


class Marker:
    """Unpickling this creates a file: proof that bytes were (or were not) unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_registry_bytes_are_checked_against_the_pin_before_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled.marker"
    buffer = io.BytesIO()
    joblib.dump(Marker(marker), buffer)

    with pytest.raises(ModelError) as caught:
        load_model_bytes("j", buffer.getvalue(), source="registry churn v3", fmt="joblib", pinned_sha256="0" * 64)

    assert "job 'j': model registry churn v3 has sha256" in str(caught.value) and "was not loaded" in str(caught.value)
    assert not marker.exists()


def test_registry_bytes_with_the_right_pin_load_and_record_that_sha256() -> None:
    buffer = io.BytesIO()
    joblib.dump(train("binary"), buffer)
    data = buffer.getvalue()
    sha = hashlib.sha256(data).hexdigest()

    model = load_model_bytes("j", data, source="registry churn v3", fmt="joblib", pinned_sha256=sha, version="v3")

    assert (model.sha256, model.version, model.source, model.path, model.fmt) == (
        sha, "v3", "registry churn v3", None, "joblib"
    )
    assert model.kind == "classifier" and model.features == tuple(FEATURES)
