"""Row-level checks: which rows of a chunk can be scored, and why the others cannot.

:func:`score_checked` is what the pipeline calls per chunk. It is a pure
function of (model, rows) like ``model.score_chunk``, which it wraps:

1. rows with a NULL key are rejected;
2. feature values are coerced to the types the model was fitted on
   (``feature_types``); a value that cannot be (text in a numeric column)
   rejects its row;
3. the rest are scored in one ``predict`` call. If the model raises, the chunk
   is split in halves, recursively, until the failing rows are isolated
   (bisection: about ``2 * bad * log2(rows)`` calls); each failing row is then
   tried against a known-good row, one column at a time, to name the column;
4. rows whose prediction or score is not finite (NaN, inf) are rejected.

The work is bounded: bisection stops once a chunk has more bad rows than
twice ``max_rejected_fraction`` of it (at least :data:`MIN_BAD_ROWS_PER_CHUNK`),
and the run fails: such a source does not have "a few bad rows", it does not
fit the model.

Reasons name the column, never the value: values may be personal data, and
reasons end up in ``rejected_rows``, logs and error messages. The key of a
rejected row is recorded (it is how you find the row).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from batch_scorer.errors import ModelError, RunFailed
from batch_scorer.feature_types import coerce_features
from batch_scorer.model import LoadedModel, score_chunk

NULL_KEY = "NULL in a key column"
NON_FINITE_SCORE = "the model returned a non-finite score (NaN or infinity)"
NON_FINITE_PREDICTION = "the model returned a non-finite prediction (NaN or infinity)"
MIN_BAD_ROWS_PER_CHUNK = 20
# Naming the column of a failing row costs up to one predict call per feature;
# after this many calls per chunk, failing rows get the generic reason.
DIAGNOSE_CALLS_PER_CHUNK = 200
FLUSH_EVERY = 10_000

RejectedRow = tuple[str, str]  # (key as JSON text, reason)


@dataclass
class Rejections:
    """Rejected rows of a run: counted by reason, and handed to ``flush`` in batches
    of ``flush_every`` so memory stays bounded whatever the source holds.

    ``rows`` holds those not yet flushed; the pipeline records them when the run ends.
    """

    flush: Callable[[list[RejectedRow]], None] | None = None
    flush_every: int = FLUSH_EVERY
    rows: list[RejectedRow] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, frame: pd.DataFrame, keys: Sequence[str], reason: str) -> None:
        self.extend((key, reason) for key in key_texts(frame, keys))

    def extend(self, rows: Any) -> None:
        for key, reason in rows:
            self.rows.append((key, reason))
            self.counts[reason] += 1
        if self.flush is not None and len(self.rows) >= self.flush_every:
            self.flush(self.rows)
            self.rows = []

    def __len__(self) -> int:
        return sum(self.counts.values())

    def top_reasons(self, n: int = 3) -> list[tuple[str, int]]:
        return self.counts.most_common(n)


def key_texts(frame: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """Each row's key as JSON text, e.g. ``{"customer_id": 42}``."""
    values = frame.loc[:, list(keys)].astype(object)
    return [
        json.dumps({k: _jsonable(v) for k, v in zip(keys, row, strict=True)}, default=str)
        for row in values.itertuples(index=False, name=None)
    ]


def _jsonable(value: Any) -> Any:
    if value is None or (isinstance(value, float) and value != value):
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)  # an integer key read as float because of NULLs in its chunk
    if isinstance(value, int | float | str | bool):
        return value
    return str(value)


def split_null_keys(frame: pd.DataFrame, keys: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rows with every key set, rows with a NULL key)``."""
    bad = frame.loc[:, list(keys)].isna().any(axis=1)
    if not bad.any():
        return frame, frame.iloc[0:0]
    return frame.loc[~bad].reset_index(drop=True), frame.loc[bad]


class Checked(NamedTuple):
    """One chunk, checked and scored: the rows to write (original values, in source
    order), their prediction and score, and the rejected ``(key, reason)`` pairs."""

    rows: pd.DataFrame
    prediction: np.ndarray
    score: np.ndarray | None
    rejected: list[RejectedRow]


def score_checked(
    model: LoadedModel,
    rows: pd.DataFrame,
    keys: Sequence[str],
    *,
    job_name: str = "",
    want_score: bool = True,
    max_rejected_fraction: float = 0.01,
) -> Checked:
    """Score the rows that can be scored; reject the others with a reason (module doc).

    Raises :class:`ModelError` if the model is broken for every input (wrong output
    shape) and :class:`RunFailed` when a chunk has too many bad rows to isolate.
    """
    rejected: list[RejectedRow] = []
    good, null_keys = split_null_keys(rows, keys)
    if len(null_keys):
        rejected += [(k, NULL_KEY) for k in key_texts(null_keys, keys)]
    features, reasons = coerce_features(good.loc[:, list(model.features)], model.feature_kinds)
    if reasons is not None:
        bad = np.fromiter((r is not None for r in reasons), dtype=bool, count=len(reasons))
        rejected += list(zip(key_texts(good.loc[bad], keys), reasons[bad].tolist(), strict=True))
        good = good.loc[~bad].reset_index(drop=True)
        features = features.loc[~bad].reset_index(drop=True)
    if not len(good):
        return Checked(good, np.empty(0), None if not want_score else np.empty(0), rejected)

    max_bad = max(MIN_BAD_ROWS_PER_CHUNK, math.ceil(2 * max_rejected_fraction * len(good)))
    try:
        ok_idx, prediction, score, failures = _bisect(model, features, max_bad)
    except ModelError as exc:
        who = f"job {job_name!r}: " if job_name else ""
        raise ModelError(
            f"{who}{exc}; nothing was published. A model must return one prediction per row "
            "(and predict_proba of shape rows x classes): check what was saved to the model "
            "file, e.g. a multi-output model where a single output is expected."
        ) from exc
    if len(failures) > max_bad:
        _too_many(model, features, ok_idx, failures, job_name, len(rows), rejected)
    if failures:
        fail_idx = np.array([i for i, _ in failures])
        fail_reasons = _diagnose(model, features, ok_idx, failures)
        rejected += list(zip(key_texts(good.iloc[fail_idx], keys), fail_reasons, strict=True))

    non_finite = np.zeros(len(ok_idx), dtype=bool)
    why = np.full(len(ok_idx), None, dtype=object)
    if prediction.dtype.kind == "f":
        bad_pred = ~np.isfinite(prediction)
        why[bad_pred] = NON_FINITE_PREDICTION
        non_finite |= bad_pred
    if score is not None:
        bad_score = ~np.isfinite(score) & ~non_finite
        why[bad_score] = NON_FINITE_SCORE
        non_finite |= bad_score
    if non_finite.any():
        rejected += list(zip(key_texts(good.iloc[ok_idx[non_finite]], keys), why[non_finite].tolist(), strict=True))
        ok_idx, prediction = ok_idx[~non_finite], prediction[~non_finite]
        score = score[~non_finite] if score is not None else None

    scored = good if len(ok_idx) == len(good) else good.iloc[ok_idx].reset_index(drop=True)
    return Checked(scored, prediction, score if want_score else None, rejected)


def _bisect(
    model: LoadedModel, features: pd.DataFrame, max_bad: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[tuple[int, str]]]:
    """Score ``features``; on failure split it until the failing rows are single.

    Returns the positions that scored (in order), their prediction and score, and
    ``(position, exception class name)`` per failing row. Stops after ``max_bad + 1``
    failing rows.
    """
    ok: list[np.ndarray] = []
    preds: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    failures: list[tuple[int, str]] = []
    has_score = True
    stack = [np.arange(len(features))]
    while stack and len(failures) <= max_bad:
        idx = stack.pop()
        part = features if len(idx) == len(features) else features.iloc[idx]
        try:
            prediction, score = score_chunk(model, part)
        except ModelError:
            raise  # wrong output shape: the model is broken, not the rows
        except Exception as exc:  # noqa: BLE001 - any model error on data is the rows' fault
            if len(idx) == 1:
                failures.append((int(idx[0]), type(exc).__name__))
            else:
                mid = len(idx) // 2
                stack += [idx[mid:], idx[:mid]]  # left half popped first: keeps source order
            continue
        ok.append(idx)
        preds.append(np.asarray(prediction))
        if score is None:
            has_score = False
        else:
            scores.append(np.asarray(score))
    if not ok:
        return np.empty(0, dtype=int), np.empty(0), None, failures
    order = np.concatenate(ok)
    prediction = np.concatenate(preds) if len(preds) > 1 else preds[0]
    score = (np.concatenate(scores) if len(scores) > 1 else scores[0]) if has_score else None
    return order, prediction, score, failures


def _diagnose(
    model: LoadedModel,
    features: pd.DataFrame,
    ok_idx: np.ndarray,
    failures: list[tuple[int, str]],
) -> list[str]:
    """A reason per failing row, naming the column whose value alone breaks a good row."""
    reasons = []
    calls = 0
    blamed: list[str] = []  # columns blamed so far are tried first: usually one culprit
    reference = features.iloc[[int(ok_idx[0])]].reset_index(drop=True) if len(ok_idx) else None
    for pos, exc_name in failures:
        column = None
        if reference is not None and calls < DIAGNOSE_CALLS_PER_CHUNK:
            order = blamed + [c for c in features.columns if c not in blamed]
            for name in order:
                if calls >= DIAGNOSE_CALLS_PER_CHUNK:
                    break
                probe = reference.copy()
                probe[name] = features[name].iloc[[pos]].to_numpy()
                calls += 1
                try:
                    score_chunk(model, probe)
                except Exception:  # noqa: BLE001 - this column's value is what fails
                    column = str(name)
                    break
        if column is not None:
            if column not in blamed:
                blamed.insert(0, column)
            reasons.append(f"column {column!r}: the model rejected the value ({exc_name})")
        else:
            reasons.append(f"the model raised {exc_name} on this row")
    return reasons


def _too_many(
    model: LoadedModel,
    features: pd.DataFrame,
    ok_idx: np.ndarray,
    failures: list[tuple[int, str]],
    job_name: str,
    chunk_rows: int,
    rejected: list[RejectedRow],
) -> None:
    reasons = Counter(_diagnose(model, features, ok_idx, failures[:MIN_BAD_ROWS_PER_CHUNK]))
    reasons.update(r for _, r in rejected)
    top = "; ".join(f"{r} ({n})" for r, n in reasons.most_common(3))
    who = f"job {job_name!r}: " if job_name else ""
    raise RunFailed(
        f"{who}the model failed on more than {len(failures) - 1} rows of one chunk of "
        f"{chunk_rows}, so the search for the bad rows was stopped; nothing was published. "
        f"Reasons among the rows examined: {top}. A source where this many rows fail usually "
        "has a column of another type than the model was fitted on, or categories it has "
        "never seen; fix the source or re-train the model (max_rejected_fraction sets how "
        "many bad rows a run tolerates)."
    )


def check_score_contract(job_name: str, want: bool | str, model: LoadedModel) -> None:
    """``output.score: true`` needs a classifier with ``predict_proba``; raise
    :class:`ModelError` before anything is written if the model has none."""
    if want is True and not (model.is_classifier and model.has_proba and model.classes):
        kind = "classifier without predict_proba" if model.is_classifier else "regressor"
        raise ModelError(
            f"job {job_name!r}: output.score is true, but model {model.path} is a {kind} "
            f"({type(model.estimator).__name__}), so it has no probability to store as the "
            "score. Use a classifier with predict_proba (e.g. SVC(probability=True)), or set "
            "output.score to auto or false."
        )
