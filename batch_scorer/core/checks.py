"""Row-level checks: which rows of a chunk can be scored, and why the others cannot.

:func:`score_checked` is what process_chunk (core/chunk.py) calls per chunk. It is a pure
function of (model, rows) (features are coerced once, then scored with ``scoring.score_prepared``
or the executor's threaded version):

1. rows with a NULL key are rejected;
2. feature values are coerced to the types the model was fitted on
   (:mod:`batch_scorer.models.features`); a value that cannot be (text in a numeric column)
   rejects its row;
3. the rest are scored in one call of the scorer (``predict``, and
   ``predict_proba`` for a score: :func:`batch_scorer.models.scoring.score_prepared`).
   If the model raises, the chunk is split in halves, recursively, until the
   failing rows are isolated
   (bisection: about ``2 * log2(rows)`` calls per bad row); each failing row is
   then tried against a known-good row, one column at a time, to name the
   column, and the other rows holding that same value in that column are
   rejected with it (a new category costs one search, however many rows have it);
4. rows whose prediction or score is not finite (NaN, inf) are rejected.

The work is bounded: the search stops once a chunk needed more searches for
a failing row than twice ``max_rejected_fraction`` of its rows (at least
:data:`MIN_BAD_ROWS_PER_CHUNK`), and the run fails: such a source does not
have "a few bad rows", it does not fit the model.

Reasons name the column, never the value: values may be personal data, and
reasons end up in ``rejected_rows``, logs and error messages. The key of a
rejected row is recorded (it is how you find the row).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from batch_scorer.errors import ModelError, RunFailed
from batch_scorer.models.features import coerce_features
from batch_scorer.models.loader import LoadedModel
from batch_scorer.models.scoring import model_input, predict_prepared, score_prepared

NULL_KEY = "NULL in a key column"
NON_FINITE_SCORE = "the model returned a non-finite score (NaN or infinity)"
NON_FINITE_PREDICTION = "the model returned a non-finite prediction (NaN or infinity)"
MIN_BAD_ROWS_PER_CHUNK = 20
# Naming the column of a failing row costs up to one predict call per feature;
# after this many calls per chunk, failing rows get the generic reason.
DIAGNOSE_CALLS_PER_CHUNK = 200
FLUSH_EVERY = 10_000

RejectedRow = tuple[str, str]  # (key as JSON text, reason)
# How a chunk's features are scored: score_prepared, or the executor's threaded version.
ScoreFn = Callable[[LoadedModel, Any], tuple[np.ndarray, np.ndarray | None]]
# What the bad-row search calls on a part: a ScoreFn, or predict_prepared (predict alone).
ModelCall = Callable[[LoadedModel, Any], Any]


@dataclass
class Rejections:
    """Rejected rows of a run: counted by reason, and handed to ``flush`` in batches
    of ``flush_every`` so memory stays bounded whatever the source holds.

    ``rows`` holds those not yet flushed; the run records them when the run ends.
    """

    flush: Callable[[list[RejectedRow]], None] | None = None
    flush_every: int = FLUSH_EVERY
    rows: list[RejectedRow] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def extend(self, rows: Any, *, flush: bool = True) -> None:
        for key, reason in rows:
            self.rows.append((key, reason))
            self.counts[reason] += 1
        if flush and self.flush is not None and len(self.rows) >= self.flush_every:
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
    bad = np.zeros(len(frame), dtype=bool)
    for key in keys:  # column by column: a frame-wide isna costs 8x more on a small chunk
        bad |= frame[key].isna().to_numpy(dtype=bool)
    if not bad.any():
        return frame, frame.iloc[0:0]
    return frame.loc[~bad].reset_index(drop=True), frame.loc[bad]


class Checked(NamedTuple):
    """One chunk, checked and scored: the rows to write (original values, in source
    order), their prediction and score, and the rejected ``(key, reason)`` pairs.

    ``features``: the model's columns of ``rows`` as the model was fed them (coerced to
    its fitted kinds), for observers (drift profiles) to count without coercing again.
    """

    rows: pd.DataFrame
    prediction: np.ndarray
    score: np.ndarray | None
    rejected: list[RejectedRow]
    features: pd.DataFrame | None = None


def score_checked(
    model: LoadedModel,
    rows: pd.DataFrame,
    keys: Sequence[str],
    *,
    job_name: str = "",
    want_score: bool = True,
    max_rejected_fraction: float = 0.01,
    scorer: ScoreFn = score_prepared,
    text_ready: Collection[str] = (),
) -> Checked:
    """Score the rows that can be scored; reject the others with a reason (module doc).

    ``text_ready``: columns of ``rows`` already converted to text for every model
    (:func:`batch_scorer.models.features.text_once`).

    Raises :class:`ModelError` if the model is broken for every input (wrong output
    shape) and :class:`RunFailed` when a chunk has too many bad rows to isolate.
    """
    rejected: list[RejectedRow] = []
    good, null_keys = split_null_keys(rows, keys)
    if len(null_keys):
        rejected += [(k, NULL_KEY) for k in key_texts(null_keys, keys)]
    features, reasons = coerce_features(good.loc[:, list(model.features)], model.feature_kinds, text_ready)
    if reasons is not None:
        bad = np.fromiter((r is not None for r in reasons), dtype=bool, count=len(reasons))
        rejected += list(zip(key_texts(good.loc[bad], keys), reasons[bad].tolist(), strict=True))
        good = good.loc[~bad].reset_index(drop=True)
        features = features.loc[~bad].reset_index(drop=True)
    if not len(good):
        return Checked(good, np.empty(0), None if not want_score else np.empty(0), rejected, features)

    max_bad = max(MIN_BAD_ROWS_PER_CHUNK, math.ceil(2 * max_rejected_fraction * len(good)))
    try:
        ok_idx, prediction, score, failures, stopped = _isolate(model, features, max_bad, scorer)
    except ModelError as exc:
        who = f"job {job_name!r}: " if job_name else ""
        raise ModelError(
            f"{who}{exc}; nothing was published. A model must return one prediction per row "
            "(and predict_proba of shape rows x classes): check what was saved to the model "
            "file, e.g. a multi-output model where a single output is expected."
        ) from exc
    if stopped:
        _too_many(failures, good, keys, job_name, len(rows), rejected)
    if failures:
        fail_idx = np.fromiter(failures, dtype=int, count=len(failures))
        rejected += list(zip(key_texts(good.iloc[fail_idx], keys), failures.values(), strict=True))

    ok_idx, prediction, score = _drop_non_finite(ok_idx, prediction, score, good, keys, rejected)
    if len(ok_idx) != len(good):
        good, features = (f.iloc[ok_idx].reset_index(drop=True) for f in (good, features))
    return Checked(good, prediction, score if want_score else None, rejected, features)


def _drop_non_finite(
    ok_idx: np.ndarray, prediction: np.ndarray, score: np.ndarray | None, good: pd.DataFrame,
    keys: Sequence[str], rejected: list[RejectedRow],
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Reject (into ``rejected``) the rows whose prediction or score is NaN or infinite."""
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
    if not non_finite.any():
        return ok_idx, prediction, score
    rejected += list(zip(key_texts(good.iloc[ok_idx[non_finite]], keys), why[non_finite].tolist(), strict=True))
    return ok_idx[~non_finite], prediction[~non_finite], score[~non_finite] if score is not None else None


def _isolate(
    model: LoadedModel, features: pd.DataFrame, max_bad: int, scorer: ScoreFn = score_prepared
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[int, str], bool]:
    """Score ``features``; where the model raises, split until the failing rows are single.

    Returns the positions that scored (ascending), their prediction and score, and
    ``{position: reason}`` for the rows that failed; the last item is True when the
    search stopped after more than ``max_bad`` searches for a failing row (rows
    rejected along with a searched one cost nothing and do not count).

    The failing rows are found with ``predict()`` alone (a probe that succeeds costs
    one model call, not two), then the good rows are scored together. Should that
    fail (``predict_proba`` raising where ``predict`` did not), they are searched
    again, this time with the scorer itself.
    """
    everything = np.arange(len(features))
    try:
        prediction, score = scorer(model, model_input(model, features))
    except ModelError:
        raise  # wrong output shape: the model is broken, not the rows
    except Exception as exc:  # noqa: BLE001 - a model error on data is the rows' fault
        first_error = type(exc).__name__
    else:
        return everything, np.asarray(prediction), _array_or_none(score), {}, False
    found = _Bisection(model, features, max_bad, call=predict_prepared, probe=predict_prepared)
    found.search(everything, first_error)
    good = np.sort(np.concatenate(found.ok)) if found.ok else np.empty(0, dtype=int)
    if found.stopped or not len(good):
        return np.empty(0, dtype=int), np.empty(0), None, found.failures, found.stopped
    try:
        prediction, score = scorer(model, model_input(model, features.iloc[good]))
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - predict_proba fails on rows where predict did not
        again = _Bisection(model, features, max_bad - found.searched, call=scorer, probe=score_prepared)
        again.search(good, type(exc).__name__)
        return (*again.scored(), {**found.failures, **again.failures}, again.stopped)
    return good, np.asarray(prediction), _array_or_none(score), found.failures, False


def _array_or_none(score: Any) -> np.ndarray | None:
    return None if score is None else np.asarray(score)


class _Bisection:
    """Finds the failing rows among rows known to fail, by splitting them in halves
    (left half first, so rows that score stay in source order). A failing row is
    tried on a known-good row one column at a time (:class:`_Diagnosis`); when one
    column's value alone makes the model raise, every other pending row with that
    same value in that column is rejected at once (a new category in 5,000 rows
    costs one search, not 5,000). ``call`` scores a part (its outputs are kept);
    ``probe`` is what the diagnosis calls on one row."""

    def __init__(
        self, model: LoadedModel, features: pd.DataFrame, max_bad: int, call: ModelCall, probe: ModelCall
    ) -> None:
        self.model = model
        self.features = features
        self.max_bad = max_bad
        self.call = call
        self.diagnosis = _Diagnosis(model, features, probe)
        self.ok: list[np.ndarray] = []
        self.outputs: list[Any] = []
        self.failures: dict[int, str] = {}
        self.searched = 0

    @property
    def stopped(self) -> bool:
        return self.searched > self.max_bad

    def search(self, failing: np.ndarray, exc_name: str) -> None:
        """Isolate the failing rows among ``failing`` (positions that failed together)."""
        stack: list[np.ndarray] = []
        undiagnosed: list[tuple[int, str]] = []
        self._failed(failing, exc_name, stack, undiagnosed)
        while stack and not self.stopped:
            idx = stack.pop()
            if not len(idx):
                continue
            try:
                out = self.call(self.model, model_input(self.model, self.features.iloc[idx]))
            except ModelError:
                raise  # wrong output shape: the model is broken, not the rows
            except Exception as exc:  # noqa: BLE001 - a model error on data is the rows' fault
                self._failed(idx, type(exc).__name__, stack, undiagnosed)
                continue
            self.ok.append(idx)
            self.outputs.append(out)
            self.diagnosis.found_good(int(idx[0]))
        for pos, exc_name in undiagnosed:  # failed before any good row was known
            column = self.diagnosis.blame(pos)
            self.failures[pos] = _column_reason(column, exc_name) if column else self.diagnosis.unnamed(exc_name)

    def _failed(
        self, idx: np.ndarray, exc_name: str, stack: list[np.ndarray], undiagnosed: list[tuple[int, str]]
    ) -> None:
        if len(idx) > 1:
            mid = len(idx) // 2
            stack += [idx[mid:], idx[:mid]]  # left half popped first: keeps source order
            return
        pos = int(idx[0])
        self.searched += 1
        column = self.diagnosis.blame(pos)
        if column is None:
            undiagnosed.append((pos, exc_name))
            return
        reason = _column_reason(column, exc_name)
        self.failures[pos] = reason
        same = self.diagnosis.same_value(column, pos)
        for i, seg in enumerate(stack):
            hit = same[seg]
            if hit.any():
                self.failures.update((int(p), reason) for p in seg[hit])
                stack[i] = seg[~hit]

    def scored(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The positions that scored (ascending), their prediction and score."""
        if not self.ok:
            return np.empty(0, dtype=int), np.empty(0), None
        order = np.concatenate(self.ok)
        prediction = np.concatenate([np.asarray(p) for p, _ in self.outputs])
        scores = [s for _, s in self.outputs]
        score = None if any(s is None for s in scores) else np.concatenate([np.asarray(s) for s in scores])
        return order, prediction, score


def _column_reason(column: str, exc_name: str) -> str:
    return f"column {column!r}: the model rejected the value ({exc_name})"


class _Diagnosis:
    """Names the column that makes a row fail: its value put into a known-good row
    makes ``probe`` (the model) raise. Bounded by :data:`DIAGNOSE_CALLS_PER_CHUNK` calls."""

    def __init__(self, model: LoadedModel, features: pd.DataFrame, probe: ModelCall = score_prepared) -> None:
        self.model = model
        self.features = features
        self.probe = probe
        self.reference: pd.DataFrame | None = None
        self.blamed: list[str] = []  # tried first: usually one culprit column
        self.calls = 0

    def found_good(self, pos: int) -> None:
        if self.reference is None:
            self.reference = self.features.iloc[[pos]].reset_index(drop=True)

    def blame(self, pos: int) -> str | None:
        if self.reference is None:
            return None
        columns = [str(c) for c in self.features.columns]
        for name in self.blamed + [c for c in columns if c not in self.blamed]:
            if self.calls >= DIAGNOSE_CALLS_PER_CHUNK:
                return None
            probe = self.reference.copy()
            probe[name] = self.features[name].iloc[[pos]].to_numpy()
            self.calls += 1
            try:
                self.probe(self.model, model_input(self.model, probe))
            except Exception:  # noqa: BLE001 - this column's value is what fails
                if name in self.blamed:
                    self.blamed.remove(name)
                self.blamed.insert(0, name)
                return name
        return None

    def unnamed(self, exc_name: str) -> str:
        """The reason of a failing row whose column was not found."""
        if self.reference is None:
            return f"the model raised {exc_name} on this row (no row of its chunk scored to compare it with)"
        if self.calls >= DIAGNOSE_CALLS_PER_CHUNK:
            return (f"the model raised {exc_name} on this row (its column was not looked for: naming "
                    f"columns stops after {DIAGNOSE_CALLS_PER_CHUNK} model calls per chunk; the rows "
                    "with a column named show what is wrong)")
        return f"the model raised {exc_name} on this row (no single column's value makes it fail)"

    def same_value(self, column: str, pos: int) -> np.ndarray:
        """Mask of the rows whose ``column`` holds the same value as row ``pos``."""
        col = self.features[column]
        value = col.iloc[pos]
        try:
            same = col.isna() if pd.isna(value) else col == value
            return np.asarray(same.fillna(False), dtype=bool)
        except (TypeError, ValueError):
            mask = np.zeros(len(col), dtype=bool)
            mask[pos] = True
            return mask


class TooManyBadRows(RunFailed):
    """Raised by :func:`score_checked` when it gives up on a chunk; ``rejected`` holds
    the rows of that chunk found bad so far (the run records them); ``rows_read`` the
    chunk's rows (read, though not scored)."""

    def __init__(self, message: str, rejected: list[RejectedRow], rows_read: int = 0) -> None:
        super().__init__(message)
        self.rejected = rejected
        self.rows_read = rows_read


def _too_many(
    failures: dict[int, str],
    good: pd.DataFrame,
    keys: Sequence[str],
    job_name: str,
    chunk_rows: int,
    rejected: list[RejectedRow],
) -> None:
    positions = np.fromiter(failures, dtype=int, count=len(failures))
    found = rejected + list(zip(key_texts(good.iloc[positions], keys), failures.values(), strict=True))
    reasons = Counter(failures.values())
    reasons.update(r for _, r in rejected)
    top = "; ".join(f"{r} ({n})" for r, n in reasons.most_common(3))
    who = f"job {job_name!r}: " if job_name else ""
    raise TooManyBadRows(
        f"{who}the model failed on {len(failures)} or more rows of one chunk of {chunk_rows}, "
        f"so the search for the bad rows was stopped; nothing was published. Reasons among "
        f"the rows examined: {top}. A source where this many rows fail usually has a column "
        "of another type than the model was fitted on, or categories it has never seen; fix "
        "the source or re-train the model (max_rejected_fraction sets how many bad rows a "
        "run tolerates).",
        found,
        chunk_rows,
    )


def check_score_contract(job_name: str, want: bool | str, model: LoadedModel) -> None:
    """``output.score: true`` needs a classifier with ``predict_proba``; raise
    :class:`ModelError` before anything is written if the model has none."""
    if want is True and not (model.is_classifier and model.has_proba and model.classes):
        raise ModelError(
            f"job {job_name!r}: output.score is true, but model {model.source} is a "
            f"{model.describe_kind()} ({type(model.estimator).__name__}), so it has no probability "
            "to store as the score. Use a classifier with predict_proba (e.g. SVC(probability=True)), "
            "or set output.score to auto or false."
        )
