"""The type each feature had when the model was fitted, and source values coerced to it.

Databases hand back types a model never saw at fit time: PostgreSQL ``numeric``
arrives as ``Decimal``, a nullable ``integer`` or ``boolean`` as objects with
``None``, a ``date`` as Python ``date`` objects, and a SQLite query source as
text. :func:`fitted_kinds` reads what a fitted scikit-learn model reveals about
its inputs (an encoder's ``categories_``, an imputer's ``statistics_``, a numeric
estimator), and :func:`coerce_features` converts each column to that kind:

* ``numeric``: ``Decimal``, nullable integers and booleans become ``float64``
  (NULL -> NaN); numbers stored as text are parsed. A value that is not a number
  marks its row as bad (the row is rejected; the value is never echoed).
* ``text``: categories stay strings; numbers and dates from the source become
  their text form (``7``, ``2026-03-31``) to match string categories; a NULL is
  always NaN (as pandas' ``str`` columns give it), never ``None``.
* unknown (e.g. a ``FunctionTransformer``): ``Decimal`` -> ``float64``, nullable
  numbers -> ``float64``, dates -> ``datetime64`` (what ``pd.to_datetime`` and
  ``read_sql(parse_dates=...)`` give), anything else unchanged.

Pure functions; no logging of values (they may be personal data).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd

NUMERIC = "numeric"
TEXT = "text"
_CONFLICT = "?"

# scikit-learn estimators that take non-numeric input (or arbitrary objects);
# every other sklearn estimator validates its input as numbers.
_NOT_NUMERIC = {
    "FunctionTransformer",
    "CountVectorizer",
    "TfidfVectorizer",
    "HashingVectorizer",
    "DictVectorizer",
    "FeatureHasher",
    "TargetEncoder",
}


def fitted_kinds(estimator: Any, features: Sequence[str]) -> dict[str, str]:
    """``{feature: 'numeric'|'text'}`` for the features whose fitted kind is known."""
    found: dict[str, str] = {}
    _walk(estimator, list(features), found, depth=0)
    return {name: kind for name, kind in found.items() if kind != _CONFLICT}


def _note(found: dict[str, str], name: str, kind: str) -> None:
    if found.get(name, kind) != kind:
        kind = _CONFLICT  # one column fed two ways: leave it alone
    found[name] = kind


def _walk(est: Any, cols: list[str], found: dict[str, str], depth: int) -> None:
    if est is None or isinstance(est, str) or depth > 20 or not cols:
        return  # 'drop' / 'passthrough' / absurd nesting
    steps = getattr(est, "steps", None)
    if isinstance(steps, list):  # Pipeline: the first real step sees the raw columns
        first = next((s for _, s in steps if s is not None and not isinstance(s, str)), None)
        _walk(first, cols, found, depth + 1)
        return
    if hasattr(est, "transformers_"):  # ColumnTransformer
        _walk_column_transformer(est, cols, found, depth)
        return
    union = getattr(est, "transformer_list", None)
    if isinstance(union, list):  # FeatureUnion: each part sees every column
        for _, part in union:
            _walk(part, cols, found, depth + 1)
        return
    for attr in ("best_estimator_", "regressor_", "estimator_"):
        inner = getattr(est, attr, None)
        if inner is not None and not isinstance(inner, list):
            _walk(inner, cols, found, depth + 1)
            return
    calibrated = getattr(est, "calibrated_classifiers_", None)
    if calibrated:
        _walk(getattr(calibrated[0], "estimator", None), cols, found, depth + 1)
        return
    categories = getattr(est, "categories_", None)
    if isinstance(categories, list) and len(categories) == len(cols):
        for name, cats in zip(cols, categories, strict=True):
            kind = np.asarray(cats).dtype.kind
            if kind in "OUS":
                _note(found, name, TEXT)
            elif kind in "iuf":
                _note(found, name, NUMERIC)
        return
    stats = getattr(est, "statistics_", None)
    if stats is not None and len(stats) == len(cols):  # SimpleImputer
        kind = TEXT if np.asarray(stats).dtype.kind in "OUS" else NUMERIC
        for name in cols:
            _note(found, name, kind)
        return
    cls = type(est)
    if not cls.__module__.startswith("sklearn.") or cls.__name__ in _NOT_NUMERIC:
        return
    categorical = getattr(est, "is_categorical_", None)  # HistGradientBoosting
    for i, name in enumerate(cols):
        if categorical is not None and i < len(categorical) and bool(categorical[i]):
            continue
        _note(found, name, NUMERIC)


def _walk_column_transformer(est: Any, cols: list[str], found: dict[str, str], depth: int) -> None:
    names_in = [str(n) for n in getattr(est, "feature_names_in_", cols)]
    indices = getattr(est, "_transformer_to_input_indices", None) or {}
    for name, transformer, spec in est.transformers_:
        if name in indices:
            sub = [names_in[i] for i in indices[name] if i < len(names_in)]
        elif isinstance(spec, list | tuple) and all(isinstance(c, str) for c in spec):
            sub = list(spec)
        elif isinstance(spec, str):
            sub = [spec]
        else:
            continue
        _walk(transformer, sub, found, depth + 1)


def coerce_features(
    frame: pd.DataFrame, kinds: Mapping[str, str], text_ready: Collection[str] = ()
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Columns converted to their fitted kind, and per row a reason it cannot be scored.

    Returns ``(frame, reasons)``: ``reasons`` is None when every row is fine, else an
    object array with ``None`` for good rows and a reason naming the column (never
    the value) for bad ones. ``text_ready``: columns :func:`text_once` already made
    what a text kind converts them to (taken as they are).
    """
    converted: dict[str, Any] = {}
    reasons: np.ndarray | None = None
    for name, dtype in frame.dtypes.items():
        kind = kinds.get(str(name))
        if kind == NUMERIC and isinstance(dtype, np.dtype) and dtype.kind in "fiub":
            continue  # already what the model saw (as _to_numeric keeps it), without making the Series
        col = frame[name]
        if kind == NUMERIC:
            new, bad = _to_numeric(col)
            if bad is not None and bad.any():
                if reasons is None:
                    reasons = np.full(len(frame), None, dtype=object)
                unset = np.fromiter((r is None for r in reasons), dtype=bool, count=len(reasons))
                reasons[bad & unset] = f"column {name!r}: not a number"
        elif kind == TEXT:
            new = col if name in text_ready else _to_text(col)
        else:
            new = _generic(col)
        if new is not col:
            converted[str(name)] = new
    if converted:
        frame = frame.assign(**converted)
    return frame, reasons


def text_once(frame: pd.DataFrame, kinds: Sequence[Mapping[str, str]]) -> tuple[pd.DataFrame, frozenset[str]]:
    """A chunk several models score, its pandas ``str`` columns that some model was fitted
    on as text already the object arrays :func:`coerce_features` makes of them: converted
    once for all the models (ten models on one source: once, not ten times per chunk).

    Also returns the names of the columns converted that a text kind would take as they
    are (``coerce_features(text_ready=...)`` skips checking them again): all but the
    columns with no value at all, which each model's :func:`_to_text` converts once more (an
    all-NULL column may come as ``None`` objects, as a SQLite chunk's does: made NaN).
    """
    text = {name for k in kinds for name, kind in k.items() if kind == TEXT}
    names = [str(name) for name in frame.columns if name in text and _is_nan_str(frame[name].dtype)]
    if not names:
        return frame, frozenset()
    ready = frozenset(name for name in names if frame[name].notna().any())
    return frame.assign(**{name: _to_text(frame[name]) for name in names}), ready


def _is_nan_str(dtype: Any) -> bool:
    return isinstance(dtype, pd.StringDtype) and dtype.na_value is np.nan


def _to_numeric(col: pd.Series) -> tuple[pd.Series, np.ndarray | None]:
    dtype = col.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "fiub":
        return col, None  # already what the model saw (int stays int, bool stays bool)
    if pd.api.types.is_extension_array_dtype(dtype) and (
        pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
    ):
        return pd.Series(col.to_numpy(dtype="float64", na_value=np.nan), index=col.index, name=col.name), None
    values = col
    if pd.api.types.infer_dtype(col, skipna=True) in ("string", "mixed"):
        # Numbers stored as text (a SQLite query, a text column): trim, '' is NULL.
        values = col.map(lambda v: (v.strip() or None) if isinstance(v, str) else v, na_action="ignore")
    missing = values.isna().to_numpy()
    out = pd.to_numeric(values.astype(object), errors="coerce").astype("float64")
    bad = out.isna().to_numpy() & ~missing
    if bad.any():
        # A literal 'NaN' text or float NaN object is missing, not bad.
        text_nan = values.map(lambda v: isinstance(v, str) and v.lower() == "nan", na_action="ignore")
        bad &= ~text_nan.fillna(False).to_numpy(dtype=bool)
    return out, (bad if bad.any() else None)


def _to_text(col: pd.Series) -> pd.Series:
    """Text as object arrays of ``str``, a NULL always NaN: what pandas' ``str`` columns give
    (read_sql of a text column, a PostgreSQL read), and what scikit-learn's imputers take as
    missing by default (``None`` is not, and an encoder sees it as a category). A chunk whose
    column is all NULL arrives as ``None`` objects (SQLite): NaN too, so a row scores the
    same whatever the rows read with it."""
    if _is_nan_str(col.dtype):
        # pandas' "str" columns as the object arrays scikit-learn's encoders and
        # imputers convert them to anyway: once per chunk, not once per step.
        return col.astype(object)
    missing = col.isna()
    if pd.api.types.is_string_dtype(col.dtype) and pd.api.types.infer_dtype(col, skipna=True) in (
        "string",
        "empty",
    ):
        if col.dtype == object and not _has_none(col, missing):
            return col
        return col.astype(object).where(~missing, np.nan)
    return col.map(_text, na_action="ignore").astype(object).where(~missing, np.nan)


def _has_none(col: pd.Series, missing: pd.Series) -> bool:
    """Whether a NULL of an object column is ``None`` (or another missing marker than NaN)."""
    if not missing.any():
        return False
    return any(not (isinstance(v, float) and v != v) for v in col[missing])


def _text(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, Decimal | float | np.floating):
        number = float(value)
        if number.is_integer():
            return str(int(number))
        return format(value.normalize(), "f") if isinstance(value, Decimal) else str(number)
    if isinstance(value, dt.date):  # date and datetime
        return value.isoformat()
    return str(value)


def _generic(col: pd.Series) -> pd.Series:
    dtype = col.dtype
    if isinstance(dtype, pd.BooleanDtype):
        return col.astype(object).where(col.notna(), np.nan)
    if pd.api.types.is_extension_array_dtype(dtype) and pd.api.types.is_numeric_dtype(dtype):
        return pd.Series(col.to_numpy(dtype="float64", na_value=np.nan), index=col.index, name=col.name)
    if not pd.api.types.is_object_dtype(dtype):
        return col
    inferred = pd.api.types.infer_dtype(col, skipna=True)
    if inferred in ("decimal", "integer", "floating", "mixed-integer-float"):
        return pd.to_numeric(col, errors="coerce").astype("float64")
    if inferred in ("date", "datetime"):
        try:
            return pd.to_datetime(col)
        except (ValueError, TypeError, OverflowError):
            return col
    return col
