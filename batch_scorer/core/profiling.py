"""The profile observer: each chunk's model input, score and predicted class counted
into bins while the run streams (no second read of the source).

:class:`ProfileObserver` is a :class:`batch_scorer.core.chunk.ChunkObserver`. Per
chunk it returns a partial: a :class:`~batch_scorer.monitoring.profile.Profile` of
the reference's bins (counts, which add), or, when the model version has no
reference yet, a :class:`~batch_scorer.monitoring.profile.ReferenceSketch` (a
bounded sample and counters, which merge). Either is computed where the chunk is
scored (a thread here, a Dask worker elsewhere) and merged on the driver with
:func:`merge_partials`; its size does not depend on the chunk's rows beyond the
sketch's fixed sample.

It counts what the model was fed: the features as coerced to the kinds the model
was fitted on, of the rows that were scored (rejected rows are not profiled).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from batch_scorer.core.checks import Checked
from batch_scorer.core.chunk import SharedChunk
from batch_scorer.monitoring.profile import (
    CATEGORICAL,
    NUMERIC,
    FeatureBins,
    Profile,
    ReferenceSketch,
    category_counts,
)

Partial = Profile | ReferenceSketch


@dataclass(frozen=True)
class ProfileObserver:
    """Counts a chunk's profiled columns (module doc); picklable, so a Dask task carries it.

    ``kinds``: every profiled column and its kind; ``bins``: the reference's, or None
    to sketch. The score is ``checked.score`` under ``score_name`` (a regressor's
    prediction when ``score_from_prediction``); the predicted class is
    ``checked.prediction`` under ``prediction_name``.
    """

    kinds: Mapping[str, str]
    bins: Mapping[str, FeatureBins] | None
    n_bins: int = 10
    score_name: str | None = None
    score_from_prediction: bool = False
    prediction_name: str | None = None
    name: str = "profile"

    def observe(self, checked: Checked, features: pd.DataFrame, shared: SharedChunk | None = None) -> Partial | None:
        """This chunk's partial (a Profile or a ReferenceSketch); None when no row was scored.

        ``shared``: the chunk as all the jobs of its read see it (``checked.rows`` is all
        of it): a text column's category counts are taken from it, made once."""
        if not len(checked.rows):
            return None
        if self.bins is None:
            sketch = ReferenceSketch(self.kinds, list(self.kinds), n_bins=self.n_bins, seed=_seed(checked))
            sketch.update({name: self._column(name, checked, features) for name in self.kinds})
            return sketch
        # Counted on the coerced features themselves: the float features of the same
        # number of bins together (one comparison), the others column by column.
        together = self._float_groups(features)
        counts: dict[str, np.ndarray] = {}
        for names in together:
            matrix = features[names].to_numpy(dtype="float64")
            counts.update(zip(names, FeatureBins.count_numeric([self.bins[n] for n in names], matrix), strict=True))
        for name, fbins in self.bins.items():
            if name not in counts:
                counts[name] = self._count(name, fbins, checked, features, shared)
        return Profile.from_counts(self.bins, counts)

    def _count(self, name: str, fbins: FeatureBins, checked: Checked, features: pd.DataFrame,
               shared: SharedChunk | None) -> np.ndarray:
        if shared is not None and fbins.kind == CATEGORICAL and self._is_feature(name, CATEGORICAL):
            text = shared.text_column(name)  # what this job was fed: the same texts as every job
            if text is not None:
                return fbins.count_categories(shared.counted(name, lambda: category_counts(text)))
        return fbins.count(self._column(name, checked, features))

    def _is_feature(self, name: str, kind: str) -> bool:
        return name not in (self.score_name, self.prediction_name) and self.kinds.get(name) == kind

    def _float_groups(self, features: pd.DataFrame) -> list[list[str]]:
        """The numeric features that are float64 columns of ``features``, by number of edges."""
        assert self.bins is not None
        groups: dict[int, list[str]] = {}
        dtypes = features.dtypes
        for name, fbins in self.bins.items():
            if (fbins.kind == NUMERIC and name not in (self.score_name, self.prediction_name)
                    and name in dtypes.index and dtypes[name] == np.float64):
                groups.setdefault(len(fbins.edges), []).append(name)
        return [names for names in groups.values() if len(names) > 1]

    def frame(self, checked: Checked, features: pd.DataFrame) -> pd.DataFrame:
        """Every profiled column of a chunk as one frame (what a reference is built from)."""
        return pd.DataFrame({name: _values(self._column(name, checked, features)) for name in self.kinds})

    def _column(self, name: str, checked: Checked, features: pd.DataFrame) -> pd.Series:
        if name == self.score_name:
            values = checked.prediction if self.score_from_prediction else checked.score
        elif name == self.prediction_name:
            values = checked.prediction
        else:
            raw = self._raw_text(name, checked)
            return raw if raw is not None else features[name]
        if values is None:  # no score this run (e.g. output.score: false): all NULL
            return pd.Series(np.full(len(checked.rows), np.nan))
        return pd.Series(values, copy=False)

    def _raw_text(self, name: str, checked: Checked) -> pd.Series | None:
        """A categorical source text column as read: the coercion only copied it into an
        object array (same values), and its Arrow strings factorize 2-4x faster."""
        raw = checked.rows[name] if self._is_feature(name, CATEGORICAL) and name in checked.rows.columns else None
        return raw if raw is not None and isinstance(raw.dtype, pd.StringDtype) else None


def _values(column: pd.Series) -> Any:
    """A column's values without its index (the sketch's frame is built positionally)."""
    return column.array if isinstance(column.dtype, pd.api.extensions.ExtensionDtype) else column.to_numpy()


def _seed(checked: Checked) -> int:
    """A seed from the chunk's first and last rows and size: the same chunk samples the same
    way (a rerun gives the same reference), different chunks independently."""
    ends = checked.rows.iloc[[0, -1]]
    digest = int(pd.util.hash_pandas_object(ends, index=False).to_numpy(dtype="uint64").sum(dtype="uint64"))
    return (digest ^ len(checked.rows)) & 0xFFFF_FFFF


def merge_partials(state: Partial | None, partial: Any) -> Partial | None:
    """Add one chunk's partial into the run's state (the first partial becomes the state)."""
    if partial is None:
        return state
    if state is None:
        return partial
    if isinstance(state, Profile) and isinstance(partial, Profile):
        return state.merge(partial)
    if isinstance(state, ReferenceSketch) and isinstance(partial, ReferenceSketch):
        return state.merge(partial)
    raise TypeError(f"cannot merge a {type(partial).__name__} partial into a {type(state).__name__}")
