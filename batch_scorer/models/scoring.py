"""Scoring rows with a loaded model: features in, ``(prediction, score)`` out.

Pure functions of (model, rows): no threads, no database. The executor decides
how a chunk is split across threads (:mod:`batch_scorer.executors.threads`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.pipeline import Pipeline

from batch_scorer.errors import ModelError
from batch_scorer.models.features import coerce_features
from batch_scorer.models.loader import LoadedModel


def prepare_features(model: LoadedModel, rows: pd.DataFrame) -> pd.DataFrame | np.ndarray:
    """Select the model's columns by name and give them the types it was fitted on.

    Values that cannot be converted (text in a numeric column) become NaN here;
    ``checks.score_checked`` rejects those rows before they get this far.
    """
    frame, _ = coerce_features(rows.loc[:, list(model.features)], model.feature_kinds)
    return model_input(model, frame)


def model_input(model: LoadedModel, features: pd.DataFrame) -> pd.DataFrame | np.ndarray:
    """Already-coerced feature columns as the model takes them: by name, or as an array."""
    return features if model.by_name else features.to_numpy()


def score_prepared(model: LoadedModel, X: pd.DataFrame | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Score features already selected and coerced (:func:`prepare_features`): ``(prediction, score)``.

    Classifiers: prediction is ``classes_[argmax(predict_proba)]`` (what ``predict``
    returns for scikit-learn's classifiers, at half the cost), score is the
    probability of the positive class (binary) or of the predicted class. Score
    is None for models without probabilities. Runs on the calling thread; the
    executor splits a large chunk across its scoring threads
    (:func:`batch_scorer.executors.threads.score_in_parts`).
    """
    return _score(model, X)


def _score(model: LoadedModel, X: pd.DataFrame | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    est, X = _split_pipeline(model.estimator, X)
    n = X.shape[0]
    if model.is_classifier and model.has_proba and model.classes:
        proba = _in_batches(est.predict_proba, X)
        if proba.ndim != 2 or proba.shape != (n, model.n_classes):
            raise ModelError(
                f"model {model.path} returned predict_proba of shape {proba.shape} for {n} rows "
                f"and {model.n_classes} classes"
            )
        idx = proba.argmax(axis=1)
        prediction = np.asarray(model.classes, dtype=object if _is_text(model.classes) else None)[idx]
        score = proba[:, 1] if model.n_classes == 2 else proba[np.arange(n), idx]
        return prediction, score.astype("float64", copy=False)
    prediction = _in_batches(est.predict, X)
    if prediction.ndim == 2 and prediction.shape[1] == 1:
        prediction = prediction[:, 0]
    if prediction.shape != (n,):
        raise ModelError(
            f"model {model.path} returned predictions of shape {prediction.shape} for {n} rows"
        )
    return prediction, None


# Predict in slices of this many rows: tree ensembles walk their trees ~15%
# faster when a slice's data stays in cache, and no model measured slower
# (issue 4; benchmarks/). Rows are scored independently, so results are equal.
SUB_BATCH_ROWS = 20_000


def _split_pipeline(est: Any, X: Any) -> tuple[Any, Any]:
    """For a Pipeline: its transforms run on the whole chunk, and only its final
    estimator is called in sub-batches. What ``Pipeline.predict_proba`` does,
    without paying the transforms' per-call overhead once per sub-batch (the
    light model scored 1.6x faster; issue 4)."""
    if not isinstance(est, Pipeline) or len(est.steps) < 2:
        return est, X
    final = est.steps[-1][1]
    if final is None or final == "passthrough":
        return est, X
    Xt = est[:-1].transform(X)
    return final, Xt.tocsr() if sparse.issparse(Xt) else Xt


def _in_batches(fn: Any, X: Any) -> np.ndarray:
    n = X.shape[0]
    if n <= SUB_BATCH_ROWS * 3 // 2:
        return np.asarray(fn(X))
    take = X.iloc if isinstance(X, pd.DataFrame) else X
    parts = [np.asarray(fn(take[i : i + SUB_BATCH_ROWS])) for i in range(0, n, SUB_BATCH_ROWS)]
    return np.concatenate(parts)


def _is_text(classes: tuple[Any, ...]) -> bool:
    return any(isinstance(c, str) for c in classes)


def prediction_kind(model: LoadedModel) -> str:
    """``'text'``, ``'integer'``, ``'boolean'`` or ``'float'``: the prediction column's type."""
    if not model.is_classifier:
        return "float"
    classes = model.classes or ()
    if any(isinstance(c, str) for c in classes):
        return "text"
    if classes and all(isinstance(c, bool | np.bool_) for c in classes):
        return "boolean"
    if classes and all(isinstance(c, int | np.integer) for c in classes):
        return "integer"
    return "float"


