"""One chunk of one job, processed: checked, scored by the champion and each challenger,
observed. Pure (rows in, results out), so it runs wherever the executor runs it:
on this machine's threads, or on a Dask worker that hands the result back.

The stream of a run is: read a chunk, :func:`process_chunk`, stage its result
(:class:`ChunkResult`); observers (drift profiles) see each checked chunk and
what the model was fed through named points, not through edits to the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from batch_scorer.core.checks import Checked, RejectedRow, ScoreFn, score_checked
from batch_scorer.masking import mask_text
from batch_scorer.models.features import coerce_features, text_once
from batch_scorer.models.loader import LoadedModel
from batch_scorer.models.scoring import prepare_features, score_prepared
from batch_scorer.storage.sinks.output import output_frame


class ChunkObserver(Protocol):
    """Sees each checked chunk where it is scored; returns a partial the driver merges."""

    name: str

    def observe(self, checked: Checked, features: pd.DataFrame, shared: SharedChunk | None = None) -> Any:
        """A mergeable partial result for this chunk (e.g. bin counts). ``shared``: the
        chunk's counts made once for all its jobs, when ``checked.rows`` is the whole of it."""


@dataclass(frozen=True)
class ChunkWork:
    """What processing a job's chunks needs (picklable: a Dask task carries it)."""

    job: str
    keys: tuple[str, ...]
    champion: LoadedModel
    main_columns: tuple[str, ...]
    challengers: tuple[tuple[str, LoadedModel], ...] = ()
    shadow_columns: tuple[str, ...] = ()
    want_score: bool = True
    max_rejected_fraction: float = 0.01
    observers: tuple[ChunkObserver, ...] = ()


@dataclass
class SharedChunk:
    """One chunk as every job of a group processes it, with what each job would redo
    made once: its text columns converted (``text_ready``, :func:`text_once`) and, as
    the first job asks for them, its text columns' category counts (ten models on one
    source count a column once per chunk, not ten times). ``source``: the chunk as read."""

    rows: pd.DataFrame
    text_ready: frozenset[str] = frozenset()
    source: pd.DataFrame | None = None
    _counts: dict[str, Any] = field(default_factory=dict, repr=False)

    def text_column(self, name: str) -> pd.Series | None:
        """Column ``name`` as read, if every job is fed it as these same texts (converted
        once, or a pandas ``str`` column left as it is); else None."""
        source = self.rows if self.source is None else self.source
        if name not in source.columns or not isinstance(source[name].dtype, pd.StringDtype):
            return None
        return source[name] if name in self.text_ready or self.rows[name].dtype == source[name].dtype else None

    def counted(self, name: str, count: Callable[[], Any]) -> Any:
        """Column ``name``'s counts: ``count()`` the first time, the same result after."""
        if name not in self._counts:
            self._counts[name] = count()
        return self._counts[name]


def shared_chunk(chunk: pd.DataFrame, works: Sequence[ChunkWork]) -> SharedChunk:
    """The chunk that ``works`` (the jobs of one read) process (:class:`SharedChunk`)."""
    if len(works) < 2:
        return SharedChunk(chunk)
    models = [m for w in works for m in (w.champion, *(c for _, c in w.challengers))]
    rows, ready = text_once(chunk, [m.feature_kinds for m in models])
    return SharedChunk(rows, ready, chunk)


@dataclass
class Comparison:
    """A challenger against the champion, over the rows both scored (mergeable)."""

    rows: int = 0
    agreeing: int = 0
    abs_diff_sum: float = 0.0
    abs_diff_max: float | None = None
    error: str | None = None

    def add(self, other: Comparison) -> None:
        self.rows += other.rows
        self.agreeing += other.agreeing
        self.abs_diff_sum += other.abs_diff_sum
        if other.abs_diff_max is not None:
            self.abs_diff_max = max(self.abs_diff_max or 0.0, other.abs_diff_max)
        self.error = self.error or other.error

    @property
    def label_agreement(self) -> float | None:
        return self.agreeing / self.rows if self.rows else None

    @property
    def mean_abs_score_diff(self) -> float | None:
        return self.abs_diff_sum / self.rows if self.rows and self.abs_diff_max is not None else None


@dataclass
class ChunkResult:
    """One processed chunk: what to stage and what to merge."""

    rows_read: int
    main: pd.DataFrame
    rejected: list[RejectedRow]
    shadows: dict[str, pd.DataFrame] = field(default_factory=dict)
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    observed: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_scored(self) -> int:
        return len(self.main)


def process_chunk(
    work: ChunkWork, chunk: pd.DataFrame | SharedChunk, scorer: ScoreFn = score_prepared
) -> ChunkResult:
    """Check, score and observe one chunk of source rows (module doc)."""
    shared = chunk if isinstance(chunk, SharedChunk) else SharedChunk(chunk)
    checked = score_checked(
        work.champion, shared.rows, work.keys, job_name=work.job, want_score=work.want_score,
        max_rejected_fraction=work.max_rejected_fraction, scorer=scorer, text_ready=shared.text_ready,
    )
    result = ChunkResult(
        rows_read=len(shared.rows),
        main=output_frame(checked.rows, work.main_columns, checked.prediction, checked.score),
        rejected=checked.rejected,
    )
    if not len(checked.rows):
        return result
    for label, model in work.challengers:
        _shadow(work, label, model, checked, result, scorer)
    if work.observers:
        # The columns as the model was fed them (coerced to its fitted kinds), as a
        # frame even for a model fed arrays: observers count columns, by name.
        frame = checked.features
        if frame is None:
            model = work.champion
            frame, _ = coerce_features(checked.rows.loc[:, list(model.features)], model.feature_kinds)
        # Counts of the shared chunk hold for this job only if it kept every row.
        whole = shared if checked.rows is shared.rows else None
        for observer in work.observers:
            result.observed[observer.name] = observer.observe(checked, frame, whole)
    return result


def _shadow(
    work: ChunkWork, label: str, model: LoadedModel, checked: Checked, result: ChunkResult, scorer: ScoreFn
) -> None:
    """Score the champion's accepted rows with one challenger; a failure is recorded, never raised."""
    try:
        prediction, score = scorer(model, prepare_features(model, checked.rows))
        if len(prediction) != len(checked.rows):
            raise ValueError(f"returned {len(prediction)} predictions for {len(checked.rows)} rows")
    except Exception as exc:  # noqa: BLE001 - a challenger never blocks the champion
        result.comparisons[label] = Comparison(error=mask_text(f"{type(exc).__name__}: {exc}"))
        return
    result.shadows[label] = output_frame(checked.rows, work.shadow_columns, prediction, score)
    result.comparisons[label] = compare(checked.prediction, checked.score, prediction, score)


def compare(
    champion_prediction: np.ndarray, champion_score: np.ndarray | None,
    prediction: np.ndarray, score: np.ndarray | None,
) -> Comparison:
    """Agreement of two models' predictions and the gap between their scores.

    Classifiers: the share of rows with the same predicted class, and the absolute
    difference of their scores. Regressors have no score: their predictions are
    compared (agreement: equal within 1e-9 relative; the gap: between predictions).
    """
    n = len(prediction)
    numeric = champion_score is None and score is None and np.asarray(prediction).dtype.kind in "fiub"
    if numeric:
        a = np.asarray(champion_prediction, dtype="float64")
        b = np.asarray(prediction, dtype="float64")
        agreeing = int(np.isclose(a, b, rtol=1e-9, atol=0.0).sum())
    else:
        agreeing = int((np.asarray(champion_prediction, dtype=object) == np.asarray(prediction, dtype=object)).sum())
        a = None if champion_score is None else np.asarray(champion_score, dtype="float64")
        b = None if score is None else np.asarray(score, dtype="float64")
    if a is None or b is None or not n:
        return Comparison(rows=n, agreeing=agreeing)
    diff = np.abs(a - b)
    return Comparison(rows=n, agreeing=agreeing, abs_diff_sum=float(diff.sum()), abs_diff_max=float(diff.max()))


def merge_comparisons(results: Sequence[dict[str, Comparison]]) -> dict[str, Comparison]:
    """Sum per-chunk comparisons by challenger."""
    out: dict[str, Comparison] = {}
    for part in results:
        for label, comp in part.items():
            out.setdefault(label, Comparison()).add(comp)
    return out
