"""Realized performance: published predictions joined to the labels that arrived later,
and the metrics of each model on them (computed with ``sklearn.metrics``).

* Binary classifiers: ``roc_auc``, ``log_loss`` and ``brier`` from the score (the
  probability of the positive class, ``classes_[1]``), and ``accuracy``.
* Multiclass classifiers: ``accuracy`` only. Their score is the probability of the
  *predicted* class; log loss and the Brier score need the probability of the
  *true* class (of every class), which the predictions table does not hold.
* Classifiers without a score (no ``predict_proba``, or ``output.score: false``):
  ``accuracy``.
* Regressors: ``rmse``, ``mae``, ``r2``.

A metric that is undefined on the rows (``roc_auc`` when the labels hold one class,
``r2`` of fewer than two rows) is left out and said so. Labels and predictions are
compared as text (``1``, ``1.0`` and ``"1"`` are one class, as the drift profiles
compare categories); rows whose label is not one of the model's classes count in
``accuracy`` (as wrong) but not in the probability metrics. Rows with a NULL label
are not labelled yet and are left out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from batch_scorer.monitoring.profile import category_text

BINARY, MULTICLASS, LABELS, REGRESSION = "binary", "multiclass", "labels", "regression"
LABEL = "_label"  # the label column of a joined frame (never a key or output column name)


@dataclass(frozen=True)
class Task:
    """What kind of predictions are evaluated: ``binary``, ``multiclass``, ``labels`` (a
    classifier without scores: accuracy only) or ``regression``; the classifier's classes."""

    kind: str
    classes: tuple[Any, ...] = ()

    @classmethod
    def of(cls, classifier: bool, classes: Sequence[Any] | None, has_scores: bool) -> Task:
        """The task of a model: a classifier's by its number of classes and whether it scores."""
        if not classifier:
            return cls(REGRESSION)
        classes = tuple(classes or ())
        if not has_scores:
            return cls(LABELS, classes)
        return cls(BINARY if len(classes) == 2 else MULTICLASS, classes)


@dataclass(frozen=True)
class Metric:
    """One figure: its name, value and the rows it was computed on."""

    metric: str
    value: float
    rows: int


def unambiguous_labels(labels: pd.DataFrame, keys: Sequence[str]) -> tuple[pd.DataFrame, int]:
    """``labels`` without NULL labels, one row per key, and how many keys were left out
    because they were labelled twice with different labels (which one is true cannot be
    told: neither is used). A key labelled twice alike is kept once."""
    labels = labels[labels[LABEL].notna()]
    if labels.empty:
        return labels, 0
    texts = labels.assign(**{LABEL: _texts(labels[LABEL], label_text)})
    distinct = texts.drop_duplicates([*keys, LABEL])
    clash = distinct.duplicated(list(keys), keep=False)
    conflicting = int(distinct.loc[clash, list(keys)].drop_duplicates().shape[0])
    kept = distinct.loc[~clash]
    return labels.loc[kept.index], conflicting


def foreign_labels(labels: pd.Series, classes: Sequence[Any] | None) -> list[str]:
    """The distinct labels (as compared, at most five) when *none* of ``labels`` is one of a
    classifier's ``classes`` (a labels column that cannot belong to the model), else []."""
    if not classes or labels.empty:
        return []
    texts = set(_texts(labels.dropna(), label_text).dropna())
    if texts & {label_text(c) for c in classes}:
        return []
    return sorted(texts)[:5]


def join_labels(predictions: pd.DataFrame, labels: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The predictions that have a (non-NULL) label, with it in :data:`LABEL`.

    ``labels`` has the same key column names as ``predictions`` and the label in
    :data:`LABEL` (one per key: :func:`unambiguous_labels`). A key of different types on
    the two sides (an integer and its text) is compared as text.
    """
    labels = labels[labels[LABEL].notna()]
    left, right = predictions, labels.drop_duplicates(list(keys), keep="first")
    for key in keys:
        if not _same_kind(left[key], right[key]):
            left = left.assign(**{key: _texts(left[key])})
            right = right.assign(**{key: _texts(right[key])})
    return left.merge(right.loc[:, [*keys, LABEL]], on=list(keys), how="inner")


def _same_kind(a: pd.Series, b: pd.Series) -> bool:
    """Plain numpy columns of one inferred kind merge as they are; anything else as text."""
    if isinstance(a.dtype, pd.api.extensions.ExtensionDtype) or isinstance(b.dtype, pd.api.extensions.ExtensionDtype):
        return False
    kinds = {pd.api.types.infer_dtype(a, skipna=True), pd.api.types.infer_dtype(b, skipna=True)}
    return len(kinds) == 1 and kinds <= {"integer", "string", "floating"}


def _texts(values: pd.Series, text: Callable[[Any], str] = category_text) -> pd.Series:
    """Each value's ``text`` form (one call per distinct value; NULL stays None)."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    texts = np.array([text(u) for u in uniques] + [None], dtype=object)
    return pd.Series(texts[codes], index=values.index, dtype=object)


_TRUTH = {"true": "1", "false": "0"}


def label_text(value: Any) -> str:
    """The text a label, a prediction or a class is compared as: :func:`category_text`,
    with a boolean (or the text ``true``/``false``, any case) as ``1``/``0``, so a model
    of classes 0/1 meets BOOLEAN labels and a model of classes False/True meets 0/1 ones."""
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    text = category_text(value)
    return _TRUTH.get(text.strip().lower(), text)


def compute(task: Task, joined: pd.DataFrame) -> tuple[list[Metric], list[str]]:
    """The metrics of ``joined`` (columns ``prediction``, ``score``, :data:`LABEL`) and notes
    on the metrics left out (module doc)."""
    if joined.empty:
        return [], []
    if task.kind == REGRESSION:
        return _regression(joined)
    label = _texts(joined[LABEL], label_text).to_numpy(dtype=object)
    predicted = _texts(joined["prediction"], label_text).to_numpy(dtype=object)
    out = [Metric("accuracy", float(skm.accuracy_score(label, predicted)), len(joined))]
    if task.kind != BINARY:
        return out, [_MULTICLASS_NOTE] if task.kind == MULTICLASS else []
    return _binary(task, joined, label, out)


_MULTICLASS_NOTE = ("log_loss and brier not computed: a multiclass predictions table holds the probability of "
                    "the predicted class only, and they need the probability of every class")


def _binary(task: Task, joined: pd.DataFrame, label: np.ndarray, out: list[Metric]) -> tuple[list[Metric], list[str]]:
    negative, positive = (label_text(c) for c in task.classes)
    score = pd.to_numeric(joined["score"], errors="coerce").to_numpy(dtype="float64")
    usable = ~np.isnan(score) & ((label == positive) | (label == negative))
    if not usable.any():
        return out, ["roc_auc, log_loss and brier not computed: no row has both a score and a label "
                     "that is one of the model's classes"]
    y, p = (label[usable] == positive).astype(int), score[usable]
    n = int(usable.sum())
    out += [Metric("log_loss", float(skm.log_loss(y, p, labels=[0, 1])), n),
            Metric("brier", float(skm.brier_score_loss(y, p, pos_label=1)), n)]
    if y.min() == y.max():
        return out, [f"roc_auc not computed: the labels hold one class only ({positive if y[0] else negative})"]
    out.append(Metric("roc_auc", float(skm.roc_auc_score(y, p)), n))
    return out, []


def _regression(joined: pd.DataFrame) -> tuple[list[Metric], list[str]]:
    y = pd.to_numeric(joined[LABEL], errors="coerce").to_numpy(dtype="float64")
    p = pd.to_numeric(joined["prediction"], errors="coerce").to_numpy(dtype="float64")
    ok = np.isfinite(y) & np.isfinite(p)
    y, p, n = y[ok], p[ok], int(ok.sum())
    if not n:
        return [], ["no row has a numeric label and prediction"]
    out = [Metric("rmse", math.sqrt(float(skm.mean_squared_error(y, p))), n),
           Metric("mae", float(skm.mean_absolute_error(y, p)), n)]
    if n < 2:
        return out, ["r2 not computed: it needs at least two rows"]
    out.append(Metric("r2", float(skm.r2_score(y, p)), n))
    return out, []
