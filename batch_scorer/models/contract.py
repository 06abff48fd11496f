"""What a fitted model must be for batch-scorer to store its predictions, read
from its attributes before a row is read (the loader calls these).

batch-scorer stores one prediction (and at most one score) per row, so a model
is refused with a :class:`ModelError` when it is not fitted, when it predicts
several values per row (multi-label or multi-output), or when the job's
``features:`` list does not have as many columns as the model was fitted on.
These checks read attributes only; :func:`batch_scorer.models.scoring.probe_model`
then scores one real row to catch what attributes do not show.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import sklearn.base
from sklearn.base import is_classifier, is_regressor
from sklearn.exceptions import NotFittedError
from sklearn.multioutput import ClassifierChain, MultiOutputClassifier, MultiOutputRegressor, RegressorChain
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from batch_scorer.errors import ModelError

KINDS = ("classifier", "regressor", "clusterer", "other")
_MULTI_OUTPUT = (MultiOutputClassifier, MultiOutputRegressor, ClassifierChain, RegressorChain)
_ONE_OUTPUT_PLEASE = (
    "batch-scorer stores one prediction per row: save a model fitted on a single target "
    "column (y of shape (n,)), or one model per target, each scored by its own job."
)


def model_kind(estimator: Any) -> str:
    """``'classifier'``, ``'regressor'``, ``'clusterer'`` (e.g. KMeans: predict returns
    cluster labels) or ``'other'`` (e.g. an outlier detector)."""
    if is_classifier(estimator) or (hasattr(estimator, "classes_") and not is_regressor(estimator)):
        return "classifier"
    if is_regressor(estimator):
        return "regressor"
    if _is_clusterer(estimator):
        return "clusterer"
    return "other"


def _is_clusterer(estimator: Any) -> bool:
    check = getattr(sklearn.base, "is_clusterer", None)  # scikit-learn >= 1.6
    if check is not None:
        return bool(check(estimator))
    return getattr(estimator, "_estimator_type", None) == "clusterer"


def check_fitted(job: str, source: str, estimator: Any) -> None:
    """Raise :class:`ModelError` if a scikit-learn estimator in the model (a
    Pipeline's every step) was saved before it was fitted."""
    for name, part in _fit_units(estimator, "model"):
        # Only scikit-learn's own classes: check_is_fitted guesses from trailing-underscore
        # attributes, which a custom model need not have (the probe row catches those).
        if not type(part).__module__.startswith("sklearn."):
            continue
        try:
            check_is_fitted(part)
        except NotFittedError as exc:
            where = "" if name == "model" else f" (Pipeline step {name!r})"
            raise ModelError(
                f"job {job!r}: model {source} holds an unfitted {type(part).__name__}{where}: it "
                "was saved before fit() was called, so it cannot predict. Fit it, save it again, "
                "and update model.sha256."
            ) from exc
        except TypeError:
            continue  # not an estimator (no fit method): nothing to check


def _fit_units(est: Any, name: str) -> Iterator[tuple[str, Any]]:
    steps = getattr(est, "steps", None)
    if isinstance(est, Pipeline) and isinstance(steps, list):
        for step_name, step in steps:
            if step is not None and not isinstance(step, str):  # 'passthrough' / None
                yield from _fit_units(step, step_name)
        return
    yield name, est


def check_single_output(job: str, source: str, estimator: Any) -> None:
    """Raise :class:`ModelError` if the model predicts more than one value per row."""
    # Innermost first, so the message names the estimator itself, not its Pipeline.
    for layer in reversed(list(_final_layers(estimator, depth=0))):
        why = _several_outputs(layer)
        if why:
            raise ModelError(
                f"job {job!r}: model {source} predicts several values per row: its "
                f"{type(layer).__name__} {why}. {_ONE_OUTPUT_PLEASE}"
            )


def _final_layers(est: Any, depth: int) -> Iterator[Any]:
    """The model and the fitted estimators that make its predictions: a Pipeline's
    last step, a search's best_estimator_, a wrapper's estimator_/regressor_."""
    if est is None or isinstance(est, str) or depth > 20:
        return
    yield est
    if isinstance(est, Pipeline) and est.steps:
        yield from _final_layers(est.steps[-1][1], depth + 1)
        return
    for attr in ("best_estimator_", "estimator_", "regressor_"):
        inner = getattr(est, attr, None)
        if inner is not None and not isinstance(inner, list | tuple):
            yield from _final_layers(inner, depth + 1)
            return


def _several_outputs(est: Any) -> str | None:
    """Why ``est``'s fitted attributes show several outputs per row, or None."""
    if getattr(est, "multilabel_", False) is True:
        return "was fitted on a multi-label indicator matrix (multilabel_ is True)"
    n_outputs = getattr(est, "n_outputs_", 1)
    if isinstance(n_outputs, int | np.integer) and n_outputs > 1:
        return f"was fitted on {int(n_outputs)} target columns (n_outputs_ is {int(n_outputs)})"
    if getattr(est, "outputs_2d_", False) is True:
        return "was fitted on a 2-D target (outputs_2d_ is True)"
    if isinstance(getattr(est, "classes_", None), list):
        return "has one classes_ array per target column (classes_ is a list)"
    if isinstance(est, _MULTI_OUTPUT):
        n = len(getattr(est, "estimators_", ()))
        if n > 1:
            return f"holds one estimator per target column ({n} estimators_)"
    coef = getattr(est, "coef_", None)
    if is_regressor(est) and isinstance(coef, np.ndarray) and coef.ndim == 2 and coef.shape[0] > 1:
        return f"was fitted on {coef.shape[0]} target columns (coef_ has shape {coef.shape})"
    return None


def check_n_features(
    job: str, source: str, estimator: Any, features: Sequence[str], by_name: bool
) -> None:
    """Raise :class:`ModelError` if the job's ``features:`` list has another length
    than the number of features the model was fitted on (``n_features_in_``)."""
    if by_name:
        return  # the names were compared already (loader._features)
    try:
        n = getattr(estimator, "n_features_in_", None)
    except Exception:  # noqa: BLE001 - a wrapper whose inner step does not know: nothing to check
        return
    if isinstance(n, int | np.integer) and len(features) != int(n):
        raise ModelError(
            f"job {job!r}: the features: list names {len(features)} columns, but model {source} "
            f"was fitted on {int(n)} features (n_features_in_). List exactly the {int(n)} columns "
            "it was fitted on, in the order it was fitted on them."
        )


# scikit-learn classes that run a user's function: what they return is not
# known from their class (a probe row tells).
_USER_CODE = ("FunctionTransformer", "TransformedTargetRegressor")


def fully_described(estimator: Any, kind: str | None = None) -> bool:
    """True when the model is made of scikit-learn's own classes only (its every step and
    sub-estimator, none running user code): then its attributes tell all the checks need
    (fitted state, outputs per row, prediction type), and no probe row is needed.
    ``kind``: its :func:`model_kind`, when known (the loaded model has it)."""
    parts = [estimator]
    if hasattr(estimator, "get_params"):
        parts += [v for v in estimator.get_params(deep=True).values() if hasattr(v, "fit")]
    return all(
        type(p).__module__.startswith("sklearn.") and type(p).__name__ not in _USER_CODE for p in parts
    ) and (kind or model_kind(estimator)) in ("classifier", "regressor", "clusterer")
