"""Loading a model file safely and scoring rows with it.

Loading a pickle runs code, so the sha256 pin is checked on the file's bytes
*before* ``joblib.load`` ever sees them. :func:`score_chunk` is a pure function
of (model, rows): the unit a future scale-out worker will run.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn
from scipy import sparse
from sklearn.base import is_classifier, is_regressor
from sklearn.pipeline import Pipeline

from batch_scorer.errors import ModelError
from batch_scorer.feature_types import coerce_features, fitted_kinds
from batch_scorer.files import warn_if_writable_by_others
from batch_scorer.threads import scoring_pool, scoring_workers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to score: the estimator and what we know about its contract."""

    estimator: Any
    path: Path
    sha256: str
    version: str
    features: tuple[str, ...]
    by_name: bool  # fitted on a DataFrame: feed columns by name, not position
    is_classifier: bool
    has_proba: bool
    classes: tuple[Any, ...] | None
    pickled_sklearn_version: str
    # What each feature was at fit time ('numeric'/'text'), where the model tells;
    # see batch_scorer.feature_types.
    feature_kinds: Mapping[str, str] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.classes) if self.classes is not None else 0


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(
    job: str,
    path: Path,
    pinned_sha256: str | None = None,
    version: str | None = None,
    features: list[str] | None = None,
    allow_version_mismatch: bool = False,
) -> LoadedModel:
    """Check the pin, unpickle, and learn the model's contract. Raises :class:`ModelError`."""
    if not path.is_file():
        raise ModelError(
            f"job {job!r}: model file {path} not found. Train and save the model there "
            "(joblib.dump(model, path)), or fix model.path in the config."
        )
    warn_if_writable_by_others(
        path, f"job {job!r}: model file", "anyone who can write it can run code as this user"
    )
    sha = file_sha256(path)
    if pinned_sha256 is not None and sha != pinned_sha256:
        raise ModelError(
            f"job {job!r}: model file {path} has sha256 {sha}, but the config pins "
            f"{pinned_sha256}. The file was not loaded. If the new file is intended, "
            "update model.sha256; otherwise restore the pinned file."
        )
    estimator, pickled_with = _unpickle(job, path)
    if pickled_with != sklearn.__version__ and not allow_version_mismatch:
        raise ModelError(
            f"job {job!r}: model file {path} was pickled with scikit-learn {pickled_with}, "
            f"but scikit-learn {sklearn.__version__} is installed. Re-train or re-save the "
            "model with this version, install the matching version, or set "
            "allow_version_mismatch: true on the job to accept the risk."
        )
    if pickled_with != sklearn.__version__:
        log.warning(
            "job %s: model pickled with scikit-learn %s, running %s (allowed by the job)",
            job, pickled_with, sklearn.__version__,
        )
    if not callable(getattr(estimator, "predict", None)):
        raise ModelError(
            f"job {job!r}: {path} holds a {type(estimator).__name__}, not a model with a "
            "predict() method. Save the fitted estimator or Pipeline itself."
        )
    feats, by_name = _features(job, path, estimator, features)
    classifier = bool(is_classifier(estimator)) or (
        hasattr(estimator, "classes_") and not is_regressor(estimator)
    )
    classes = tuple(getattr(estimator, "classes_", ())) if classifier else None
    return LoadedModel(
        estimator=estimator,
        path=path,
        sha256=sha,
        version=version or sha[:12],
        features=feats,
        by_name=by_name,
        is_classifier=classifier,
        has_proba=callable(getattr(estimator, "predict_proba", None)),
        classes=classes,
        pickled_sklearn_version=pickled_with,
        feature_kinds=fitted_kinds(estimator, feats),
    )


def _unpickle(job: str, path: Path) -> tuple[Any, str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            estimator = joblib.load(path)  # noqa: S301 - pinned by sha256 above; see README
        except Exception as exc:  # any unpickling failure is a bad model file
            raise ModelError(
                f"job {job!r}: cannot load model file {path}: {type(exc).__name__}: {exc}. "
                "The file may be truncated, corrupt, or not a joblib/pickle file; save it "
                "again with joblib.dump."
            ) from exc
    pickled_with = sklearn.__version__
    for w in caught:
        original = getattr(w.message, "original_sklearn_version", None)
        if original:
            pickled_with = str(original)
        elif not issubclass(w.category, UserWarning | FutureWarning | DeprecationWarning):
            continue
    return estimator, pickled_with


def _features(
    job: str, path: Path, estimator: Any, configured: list[str] | None
) -> tuple[tuple[str, ...], bool]:
    names = getattr(estimator, "feature_names_in_", None)
    if names is not None:
        fitted = tuple(str(n) for n in names)
        if configured is not None and list(configured) != list(fitted):
            missing = sorted(set(fitted) - set(configured))
            extra = sorted(set(configured) - set(fitted))
            raise ModelError(
                f"job {job!r}: the features: list does not match the columns the model was "
                f"fitted on (missing {missing}, not used {extra}, or another order). Remove "
                "features: from the job (the model knows its columns) or correct it."
            )
        return fitted, True
    if configured:
        return tuple(configured), False
    raise ModelError(
        f"job {job!r}: model {path} does not record the columns it was fitted on (it was "
        "fitted on an array, not a DataFrame). List them in order under the job's "
        "features: key."
    )


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


def score_chunk(model: LoadedModel, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """Score rows: ``(prediction, score)``; score is None for models without probabilities.

    Classifiers: prediction is ``classes_[argmax(predict_proba)]`` (what ``predict``
    returns for scikit-learn's classifiers, at half the cost), score is the
    probability of the positive class (binary) or of the predicted class.
    """
    return score_prepared(model, prepare_features(model, rows))


def score_prepared(model: LoadedModel, X: pd.DataFrame | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`score_chunk` for features already selected and coerced (``prepare_features``).

    A large chunk is scored in parts on the scoring threads
    (:func:`batch_scorer.threads.scoring_pool`); rows are scored
    independently, so the result is the same.
    """
    n = X.shape[0]
    workers = scoring_workers()
    if workers < 2 or n < PARALLEL_MIN_ROWS:
        return _score(model, X)
    take = X.iloc if isinstance(X, pd.DataFrame) else X
    step = -(-n // workers)
    parts = list(scoring_pool().map(lambda i: _score(model, take[i : i + step]), range(0, n, step)))
    prediction = np.concatenate([p for p, _ in parts])
    scores = [s for _, s in parts]
    return prediction, None if scores[0] is None else np.concatenate(scores)  # type: ignore[arg-type]


# Chunks smaller than this are scored on the calling thread (bisection probes,
# small tables): splitting them costs more than it saves.
PARALLEL_MIN_ROWS = 4_000


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


def sklearn_version() -> str:
    return sklearn.__version__

