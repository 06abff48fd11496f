"""Loading a model file safely and learning its contract.

Loading a pickle runs code, so the sha256 pin is checked on the file's bytes
*before* ``joblib.load`` ever sees them. What a fitted model reveals (its
columns, classes, the kind of each feature) is learnt once, here, into a
:class:`LoadedModel`; :mod:`batch_scorer.models.scoring` scores with it.
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
import sklearn
from sklearn.base import is_classifier, is_regressor

from batch_scorer.errors import ModelError
from batch_scorer.files import warn_if_writable_by_others
from batch_scorer.models.features import fitted_kinds

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
