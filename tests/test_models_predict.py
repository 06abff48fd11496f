"""The prediction written is exactly the model's ``predict()``, row by row, and the
score is the ``predict_proba`` column the contract names (binary: ``classes_[1]``;
multiclass: the predicted class), for thresholded, Platt-scaled and custom
classifiers, and for the fast-path types on rows forced to near-ties."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import FixedThresholdClassifier, TunedThresholdClassifierCV
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from batch_scorer.executors import threads
from batch_scorer.executors.threads import PARALLEL_MIN_ROWS
from batch_scorer.models.loader import LoadedModel, load_model
from batch_scorer.models.scoring import PROBA_ARGMAX_TYPES, near_ties, score_prepared
from tests.helpers import save_model

SVC_DEPRECATION = "ignore:The `probability` parameter:FutureWarning"


def _loaded(tmp_path: Path, estimator: Any) -> LoadedModel:
    return load_model("j", save_model(estimator, tmp_path / "m.joblib"))


def _expected_score(estimator: Any, X: pd.DataFrame, prediction: np.ndarray) -> np.ndarray:
    """What the contract names: P(classes_[1]) for two classes, else P(predicted class)."""
    proba = estimator.predict_proba(X)
    classes = list(estimator.classes_)
    if len(classes) == 2:
        return proba[:, 1]
    return proba[np.arange(len(X)), [classes.index(p) for p in prediction]]


def _assert_exact(model: LoadedModel, estimator: Any, X: pd.DataFrame, scored: tuple[np.ndarray, Any]) -> None:
    prediction, score = scored
    expected = estimator.predict(X)
    assert prediction.dtype == expected.dtype
    np.testing.assert_array_equal(prediction, expected)  # row by row
    np.testing.assert_array_equal(score, _expected_score(estimator, X, expected))


def _breast_cancer() -> tuple[pd.DataFrame, pd.Series]:
    return load_breast_cancer(return_X_y=True, as_frame=True)


def test_a_fixed_threshold_of_0_9_is_what_gets_written(tmp_path: Path) -> None:
    X, y = _breast_cancer()
    estimator = FixedThresholdClassifier(make_pipeline(StandardScaler(), LogisticRegression()), threshold=0.9)
    estimator.fit(X, y)
    model = _loaded(tmp_path, estimator)

    scored = score_prepared(model, X)

    argmax = estimator.classes_[estimator.predict_proba(X).argmax(axis=1)]
    assert (argmax != estimator.predict(X)).sum() == 31  # the threshold moves 31 of 569 rows
    _assert_exact(model, estimator, X, scored)


def test_a_tuned_threshold_is_what_gets_written(tmp_path: Path) -> None:
    X, y = _breast_cancer()
    estimator = TunedThresholdClassifierCV(
        make_pipeline(StandardScaler(), LogisticRegression()), cv=3, scoring="f1", thresholds=20, random_state=0
    ).fit(X, y)
    model = _loaded(tmp_path, estimator)

    scored = score_prepared(model, X)

    assert (estimator.classes_[estimator.predict_proba(X).argmax(axis=1)] != estimator.predict(X)).any()
    _assert_exact(model, estimator, X, scored)


@pytest.mark.filterwarnings(SVC_DEPRECATION)
@pytest.mark.parametrize("data", ["binary", "multiclass"])
def test_platt_scaled_svc_writes_predict_not_the_argmax_of_its_probabilities(tmp_path: Path, data: str) -> None:
    if data == "binary":
        X, y = _breast_cancer()
        estimator = make_pipeline(StandardScaler(), SVC(probability=True, random_state=0)).fit(X, y)
    else:
        X, y = load_iris(return_X_y=True, as_frame=True)
        estimator = SVC(probability=True, random_state=0).fit(X, y)
    model = _loaded(tmp_path, estimator)

    scored = score_prepared(model, X)

    assert (estimator.classes_[estimator.predict_proba(X).argmax(axis=1)] != estimator.predict(X)).sum() == 1
    _assert_exact(model, estimator, X, scored)


class CautiousClassifier(ClassifierMixin, BaseEstimator):
    """A custom classifier: predicts the last class as soon as its probability passes 0.3."""

    def fit(self, X: Any, y: Any) -> CautiousClassifier:
        self.inner_ = LogisticRegression(max_iter=500).fit(X, y)
        self.classes_ = self.inner_.classes_
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        return self.inner_.predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)
        return np.where(proba[:, -1] > 0.3, self.classes_[-1], self.classes_[proba.argmax(axis=1)])


@pytest.mark.parametrize("data", ["binary", "multiclass"])
def test_a_custom_classifier_writes_its_own_predict(tmp_path: Path, data: str) -> None:
    X, y = _breast_cancer() if data == "binary" else load_iris(return_X_y=True, as_frame=True)
    labels = np.array(["benign", "malignant"] if data == "binary" else ["setosa", "versicolor", "virginica"])
    estimator = make_pipeline(StandardScaler(), CautiousClassifier()).fit(X, labels[y])
    model = _loaded(tmp_path, estimator)

    scored = score_prepared(model, X)

    assert (estimator.classes_[estimator.predict_proba(X).argmax(axis=1)] != estimator.predict(X)).any()
    _assert_exact(model, estimator, X, scored)


# Fast path: predict() derived from predict_proba, near-ties recomputed with predict().

FAST: dict[str, Callable[[], Any]] = {
    "DecisionTree": lambda: DecisionTreeClassifier(random_state=0),
    "RandomForest": lambda: RandomForestClassifier(n_estimators=3, bootstrap=False, random_state=0),
    "ExtraTrees": lambda: ExtraTreesClassifier(n_estimators=3, random_state=0),
    "HistGradientBoosting": lambda: HistGradientBoostingClassifier(max_iter=10, min_samples_leaf=2, random_state=0),
    "GradientBoosting": lambda: GradientBoostingClassifier(n_estimators=10, random_state=0),
    "LogisticRegression": lambda: LogisticRegression(),
    "CalibratedClassifierCV": lambda: CalibratedClassifierCV(LogisticRegression(), cv=2),
}
LABELS = {"int": {2: [0, 1], 3: [0, 1, 2]}, "str": {2: ["no", "yes"], 3: ["high", "low", "mid"]}}


def _tie_training_data(n_classes: int, labels: list[Any]) -> tuple[pd.DataFrame, np.ndarray]:
    """Each class in its own corner, plus one point where every class occurs equally
    often: no model can tell the classes apart there, so it predicts a tie."""
    rng = np.random.default_rng(0)
    angles = 2 * np.pi * np.arange(n_classes) / n_classes
    corners = np.column_stack([np.cos(angles), np.sin(angles)]) * 4
    spread = np.concatenate([c + rng.normal(scale=0.7, size=(30, 2)) for c in corners])
    X = np.concatenate([spread, np.zeros((6 * n_classes, 2))])
    y = np.concatenate([np.repeat(labels, 30), np.tile(labels, 6)])
    return pd.DataFrame(X, columns=["f0", "f1"]), np.asarray(y)


def _boundary_rows(estimator: Any, X: pd.DataFrame) -> pd.DataFrame:
    """Rows on the decision boundary between differently predicted rows, found by
    bisection to the last bit: where the top two probabilities (nearly) tie."""
    top = estimator.predict_proba(X).argmax(axis=1)
    starts = np.arange(0, len(X), 5)
    ends = np.array([np.flatnonzero(top != top[a])[0] for a in starts])
    lo, hi = X.to_numpy()[starts], X.to_numpy()[ends]
    for _ in range(60):  # all segments at once: one predict_proba call per step
        mid = (lo + hi) / 2
        same = estimator.predict_proba(pd.DataFrame(mid, columns=X.columns)).argmax(axis=1) == top[starts]
        lo = np.where(same[:, None], mid, lo)
        hi = np.where(same[:, None], hi, mid)
    return pd.DataFrame(np.concatenate([lo, hi]), columns=X.columns)


@pytest.mark.parametrize("labels", ["int", "str"])
@pytest.mark.parametrize("n_classes", [2, 3], ids=["binary", "multiclass"])
@pytest.mark.parametrize("name", list(FAST))
def test_fast_path_types_write_exactly_predict_on_near_ties(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, n_classes: int, labels: str
) -> None:
    X, y = _tie_training_data(n_classes, LABELS[labels][n_classes])
    estimator = FAST[name]().fit(X, y)
    assert type(estimator) in PROBA_ARGMAX_TYPES
    model = _loaded(tmp_path, estimator)
    # Trees and boosting tie at the point where every class occurs; the smooth models
    # (LogisticRegression, calibrated) on their decision boundary.
    smooth = name in ("LogisticRegression", "CalibratedClassifierCV")
    rows = pd.concat([X, _boundary_rows(estimator, X)], ignore_index=True) if smooth else X
    assert near_ties(estimator.predict_proba(rows)).sum() >= 2  # the recompute path runs

    _assert_exact(model, estimator, rows, score_prepared(model, rows))

    many = pd.concat([rows] * (PARALLEL_MIN_ROWS // len(rows) + 2), ignore_index=True)
    _assert_exact(model, estimator, many, threads.score_in_parts(model, many, threads.ThreadSettings(1, 2)))


def test_a_classifier_fitted_on_one_class_predicts_it(tmp_path: Path) -> None:
    X, _ = _tie_training_data(2, [0, 1])
    estimator = DecisionTreeClassifier().fit(X, np.full(len(X), "only"))
    model = _loaded(tmp_path, estimator)

    prediction, score = score_prepared(model, X)

    np.testing.assert_array_equal(prediction, estimator.predict(X))
    np.testing.assert_array_equal(score, np.ones(len(X)))


def test_a_tie_that_argmax_gets_wrong_is_recomputed_with_predict(tmp_path: Path) -> None:
    # GradientBoosting predicts classes_[1] at a raw score of exactly 0 (>= 0), where
    # both probabilities are 0.5 and argmax says classes_[0].
    X, y = _tie_training_data(2, ["no", "yes"])
    estimator = GradientBoostingClassifier(n_estimators=10, random_state=0).fit(X, y)
    model = _loaded(tmp_path, estimator)
    tie = X.iloc[-1:]

    prediction, score = score_prepared(model, tie)

    assert estimator.classes_[estimator.predict_proba(tie).argmax(axis=1)][0] == "no"
    assert estimator.predict(tie)[0] == "yes"
    assert prediction[0] == "yes" and score[0] == 0.5


_transform_calls: list[int] = []


def _count_transform(X: Any) -> Any:
    _transform_calls.append(len(X))
    return X


@pytest.mark.filterwarnings(SVC_DEPRECATION)
@pytest.mark.parametrize(
    "final",
    [lambda: SVC(probability=True, random_state=0), lambda: LogisticRegression()],
    ids=["predict-and-predict_proba", "fast-path"],
)
def test_a_pipelines_transforms_run_once_per_chunk(tmp_path: Path, final: Callable[[], Any]) -> None:
    X, y = _breast_cancer()
    estimator = Pipeline([("count", FunctionTransformer(_count_transform)), ("sc", StandardScaler()), ("m", final())])
    model = _loaded(tmp_path, estimator.fit(X, y))
    _transform_calls.clear()

    scored = score_prepared(model, X)

    assert _transform_calls == [len(X)]
    _assert_exact(model, estimator, X, scored)
