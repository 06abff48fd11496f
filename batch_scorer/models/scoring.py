"""Scoring rows with a loaded model: features in, ``(prediction, score)`` out.

The contract: ``prediction`` is exactly what the model's ``predict()`` returns,
row by row. ``score`` is a ``predict_proba`` column: for a binary classifier the
probability of ``classes_[1]`` (the positive class), for a multiclass one the
probability of the predicted class; None for models without probabilities.

Pure functions of (model, rows): no threads, no database. The executor decides
how a chunk is split across threads (:mod:`batch_scorer.executors.threads`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeClassifier, ExtraTreeClassifier

from batch_scorer.errors import ModelError, SourceError
from batch_scorer.models.features import coerce_features
from batch_scorer.models.loader import LoadedModel

# Classifiers whose predict() is, by construction, the argmax of predict_proba
# (scikit-learn 1.9 sources): trees and forests take the argmax of the very array
# predict_proba returns; CalibratedClassifierCV calls predict_proba; boosting and
# LogisticRegression threshold or argmax the raw scores that predict_proba maps
# through a monotone link (sigmoid / softmax). For these, one predict_proba call
# gives both outputs (predict would recompute the whole ensemble), except where
# the top two probabilities are within rounding of each other: there the argmax
# may differ from predict's (GradientBoosting predicts classes_[1] at a raw score
# of exactly 0, where both probabilities are 0.5), so those rows call predict().
# Exact types only: a subclass may override predict.
PROBA_ARGMAX_TYPES: frozenset[type] = frozenset(
    {
        DecisionTreeClassifier,
        ExtraTreeClassifier,
        RandomForestClassifier,
        ExtraTreesClassifier,
        HistGradientBoostingClassifier,
        GradientBoostingClassifier,
        LogisticRegression,
        CalibratedClassifierCV,
    }
)
# Rows whose top two probabilities differ by at most this are near-ties (float64
# rounding in a sigmoid/softmax is ~1e-16; float32 probabilities get 64 ulps).
TIE_TOLERANCE = 1e-9


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

    ``prediction`` is exactly ``predict()``; ``score`` is the probability of the
    positive class (binary) or of the predicted class (multiclass), None for
    models without ``predict_proba`` (module doc). A Pipeline's transforms run
    once, whether one method or two is called. Runs on the calling thread; the
    executor splits a large chunk across its scoring threads
    (:func:`batch_scorer.executors.threads.score_in_parts`).
    """
    est, Xt = _split_pipeline(model.estimator, X)
    n = Xt.shape[0]
    if not (model.is_classifier and model.has_proba and model.classes):
        (prediction,) = _in_batches(Xt, est.predict)
        return _one_per_row(model, prediction, n), None
    if type(est) in PROBA_ARGMAX_TYPES:
        return _score_from_proba(model, est, Xt)
    prediction, proba = _in_batches(Xt, est.predict, est.predict_proba)
    prediction = _one_per_row(model, prediction, n)
    _check_proba(model, proba, n)
    if model.n_classes == 2:
        return prediction, proba[:, 1].astype("float64", copy=False)
    idx = _class_index(model, _classes(model, est), prediction)
    return prediction, proba[np.arange(n), idx].astype("float64", copy=False)


def predict_prepared(model: LoadedModel, X: pd.DataFrame | np.ndarray) -> np.ndarray:
    """``predict()`` alone on prepared features, one value per row (what
    :func:`score_prepared` returns as the prediction, without the score). The
    bisection of bad rows probes with it: a probe then costs one model call."""
    est, Xt = _split_pipeline(model.estimator, X)
    (prediction,) = _in_batches(Xt, est.predict)
    return _one_per_row(model, prediction, Xt.shape[0])


def _score_from_proba(model: LoadedModel, est: Any, X: Any) -> tuple[np.ndarray, np.ndarray]:
    """One predict_proba call; predict() only for the near-tie rows (PROBA_ARGMAX_TYPES)."""
    n = X.shape[0]
    (proba,) = _in_batches(X, est.predict_proba)
    _check_proba(model, proba, n)
    classes = _classes(model, est)
    idx = proba.argmax(axis=1)
    prediction = classes.take(idx)  # what these classifiers' predict() returns, dtype included
    ties = np.flatnonzero(near_ties(proba))
    if len(ties):
        exact = _one_per_row(model, np.asarray(est.predict(_take_rows(X, ties))), len(ties))
        prediction[ties] = exact
        idx[ties] = _class_index(model, classes, exact)
    score = proba[:, 1] if model.n_classes == 2 else proba[np.arange(n), idx]
    return prediction, score.astype("float64", copy=False)


def near_ties(proba: np.ndarray) -> np.ndarray:
    """Rows whose two highest probabilities are within :data:`TIE_TOLERANCE` (or NaN):
    rows where the argmax may not be what predict() returns."""
    if proba.shape[1] < 2:
        return np.zeros(len(proba), dtype=bool)  # one class: nothing to tie with
    tol = TIE_TOLERANCE
    if proba.dtype.kind == "f":
        tol = max(tol, 64 * float(np.finfo(proba.dtype).eps))
    if proba.shape[1] == 2:
        gap = np.abs(proba[:, 1] - proba[:, 0])
    else:
        top = np.partition(proba, -2, axis=1)[:, -2:]
        gap = top[:, 1] - top[:, 0]
    return ~(gap > tol)  # NaN counts as a tie: predict() decides


def _classes(model: LoadedModel, est: Any) -> np.ndarray:
    """The classes predict() picks from: the final estimator's own ``classes_`` array."""
    classes = getattr(est, "classes_", None)
    return np.asarray(classes if classes is not None else model.classes)


def _class_index(model: LoadedModel, classes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each label's position in ``classes``; :class:`ModelError` if one is not a class."""
    if len(labels) == 0:
        return np.empty(0, dtype=int)
    try:
        order = np.argsort(classes, kind="stable")
        pos = np.minimum(np.searchsorted(classes[order], labels), len(classes) - 1)
        idx = order[pos]
        found = np.asarray(classes[idx] == labels, dtype=bool)
    except TypeError:  # classes of mixed, unorderable types
        where = {c: i for i, c in reversed(list(enumerate(classes.tolist())))}
        idx = np.array([where.get(v, -1) for v in np.asarray(labels).tolist()], dtype=int)
        found = idx >= 0
    if not found.all():
        raise ModelError(
            f"model {model.source} predicted a label that is not one of its classes_, so its "
            "probability cannot be looked up for the score"
        )
    return idx


def _one_per_row(model: LoadedModel, prediction: np.ndarray, n: int) -> np.ndarray:
    if prediction.ndim == 2 and prediction.shape[1] == 1:
        prediction = prediction[:, 0]
    if prediction.shape != (n,):
        raise ModelError(
            f"model {model.source} returned predictions of shape {prediction.shape} for {n} rows"
        )
    return prediction


def _check_proba(model: LoadedModel, proba: np.ndarray, n: int) -> None:
    if proba.ndim != 2 or proba.shape != (n, model.n_classes):
        raise ModelError(
            f"model {model.source} returned predict_proba of shape {proba.shape} for {n} rows "
            f"and {model.n_classes} classes"
        )


# Predict in slices of this many rows: tree ensembles walk their trees ~15%
# faster when a slice's data stays in cache, and no model measured slower
# (issue 4; benchmarks/). Rows are scored independently, so results are equal.
SUB_BATCH_ROWS = 20_000


def _split_pipeline(est: Any, X: Any) -> tuple[Any, Any]:
    """For a Pipeline: its transforms run on the whole chunk, and only its final
    estimator is called in sub-batches. What ``Pipeline.predict_proba`` does,
    without paying the transforms' per-call overhead once per sub-batch (the
    light model scored 1.6x faster; issue 4), nor once per method called."""
    if not isinstance(est, Pipeline) or len(est.steps) < 2:
        return est, X
    final = est.steps[-1][1]
    if final is None or final == "passthrough":
        return est, X
    Xt = est[:-1].transform(X)
    return final, Xt.tocsr() if sparse.issparse(Xt) else Xt


def _in_batches(X: Any, *methods: Any) -> list[np.ndarray]:
    """Each method's output on ``X``, called slice by slice (both methods on one
    slice while it is in cache) and joined."""
    n = X.shape[0]
    if n <= SUB_BATCH_ROWS * 3 // 2:
        return [_as_array(fn(X)) for fn in methods]
    take = X.iloc if isinstance(X, pd.DataFrame) else X
    parts = [[_as_array(fn(take[i : i + SUB_BATCH_ROWS])) for fn in methods] for i in range(0, n, SUB_BATCH_ROWS)]
    return [np.concatenate([part[k] for part in parts]) for k in range(len(methods))]


def _as_array(result: Any) -> np.ndarray:
    if isinstance(result, list):  # multi-output predict_proba: one array per output
        raise ModelError(
            f"the model returned a list of {len(result)} arrays (one per output) where one array "
            "was expected"
        )
    return np.asarray(result)


def _take_rows(X: Any, rows: np.ndarray) -> Any:
    return X.iloc[rows] if isinstance(X, pd.DataFrame) else X[rows]


class Probe(NamedTuple):
    """What scoring one real source row showed (:func:`probe_model`)."""

    # numpy dtype kind of predict()'s output ('i', 'u', 'f', 'b', 'U', 'O'; object
    # arrays of str/bool/int/float report 'U'/'b'/'i'/'f'), None if predict() failed.
    predict_dtype_kind: str | None
    # Why the row could not be scored (a bad row, not a bad model), else None.
    row_error: str | None


def probe_model(job: str, model: LoadedModel, rows: pd.DataFrame) -> Probe:
    """Score the first row of ``rows`` (raw source columns) with the model's own
    ``predict``/``predict_proba`` and with :func:`score_prepared`, before a run starts.

    Raises :class:`ModelError` naming the job when the model is broken for every
    row: it predicts several values per row, its ``predict_proba`` returns a list
    of arrays or the wrong shape, or a part of it is not fitted. Any other
    exception on that row is the row's problem (runs reject bad rows one by one):
    it is returned in ``row_error``, not raised.
    """
    missing = [c for c in model.features if c not in rows.columns]
    if missing:
        raise SourceError(f"job {job!r}: the probe row lacks the model's columns {missing}.")
    if not len(rows):
        return Probe(None, "the source has no row to probe")
    frame, reasons = coerce_features(rows.loc[:, list(model.features)].iloc[:1].reset_index(drop=True),
                                     model.feature_kinds)
    if reasons is not None and reasons[0] is not None:
        return Probe(None, str(reasons[0]))
    X = model_input(model, frame)
    kind: str | None = None
    try:
        # A Pipeline's transforms once (they cost more than the final step on one row).
        est, Xt = _split_pipeline(model.estimator, X)
        prediction = est.predict(Xt)
        _check_probe_predict(job, model, prediction)
        kind = output_kind(prediction)
        if model.is_classifier and model.has_proba and model.classes:
            _check_probe_proba(job, model, est.predict_proba(Xt))
    except NotFittedError as exc:
        raise ModelError(
            f"job {job!r}: model {model.source} is not fitted ({exc}). Fit it, save it again, "
            "and update model.sha256."
        ) from exc
    except ModelError as exc:
        if str(exc).startswith(f"job {job!r}:"):
            raise
        raise ModelError(f"job {job!r}: {exc}. Nothing was scored.") from exc
    except Exception as exc:  # noqa: BLE001 - a row the model cannot score is a bad row, handled by the run
        return Probe(kind, f"the model raised {type(exc).__name__} on the probe row")
    return Probe(kind, None)


def _check_probe_predict(job: str, model: LoadedModel, prediction: Any) -> None:
    if isinstance(prediction, list):
        raise ModelError(
            f"job {job!r}: model {model.source}'s predict() returned a list of {len(prediction)} "
            "arrays for one row (one per output). batch-scorer stores one prediction per row."
        )
    shape = np.shape(prediction)
    if shape in ((1,), (1, 1)):
        return
    several = len(shape) == 2 and shape[0] == 1
    raise ModelError(
        f"job {job!r}: model {model.source}'s predict() returned shape {shape} for one row"
        + (f": {shape[1]} values per row (multi-label or multi-output)" if several else "")
        + ". batch-scorer stores one prediction per row: save a model fitted on a single "
        "target column, or one model per target, each scored by its own job."
    )


def _check_probe_proba(job: str, model: LoadedModel, proba: Any) -> None:
    if isinstance(proba, list):
        raise ModelError(
            f"job {job!r}: model {model.source}'s predict_proba() returned a list of {len(proba)} "
            "arrays (one per output): it is a multi-output model. batch-scorer stores one "
            "prediction and one score per row; save a single-output model."
        )
    if np.shape(proba) != (1, model.n_classes):
        raise ModelError(
            f"job {job!r}: model {model.source}'s predict_proba() returned shape {np.shape(proba)} "
            f"for one row, not (1, {model.n_classes}): one column per class in classes_. "
            "Save a model whose predict_proba follows scikit-learn's contract."
        )


def output_kind(prediction: Any) -> str:
    """The numpy dtype kind of a prediction array; object arrays holding only str,
    bool, int or float report ``'U'``, ``'b'``, ``'i'`` or ``'f'``."""
    values = np.asarray(prediction)
    if values.dtype.kind != "O" or not values.size:
        return values.dtype.kind
    items = values.ravel().tolist()
    for kind, types in (("U", str), ("b", bool | np.bool_), ("f", float | np.floating)):
        if all(isinstance(v, types) for v in items):
            return kind
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in items):
        return "i"
    return "O"


_INTEGER_KINDS = ("i", "u")
_OTHER_KINDS = {"i": "integer", "u": "integer", "b": "boolean", "U": "text", "S": "text", "f": "float"}


def prediction_kind(model: LoadedModel, predict_dtype_kind: str | None = None) -> str:
    """``'text'``, ``'integer'``, ``'boolean'`` or ``'float'``: the prediction column's type.

    Classifiers: by their classes. Clusterers: integer (cluster labels).
    Regressors: integer when predict() returns integers (``predict_dtype_kind``
    from :func:`probe_model`), else float. Other models: by that dtype kind,
    float when it is unknown.
    """
    if model.is_classifier:
        return _kind_of_classes(model.classes or ())
    if model.kind == "clusterer":
        return "integer"
    if model.kind == "regressor":
        return "integer" if predict_dtype_kind in _INTEGER_KINDS else "float"
    return _OTHER_KINDS.get(predict_dtype_kind or "", "float")


def _kind_of_classes(classes: tuple[Any, ...]) -> str:
    if any(isinstance(c, str) for c in classes):
        return "text"
    if classes and all(isinstance(c, bool | np.bool_) for c in classes):
        return "boolean"
    if classes and all(isinstance(c, int | np.integer) for c in classes):
        return "integer"
    return "float"
