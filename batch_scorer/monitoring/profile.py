"""Streaming feature profiles: each model input (and the score) counted into fixed bins.

A profile is a handful of integer counts per feature, so a run can profile every
chunk while it streams (no second read) in memory independent of the row count.
The bins come from a *reference* (the model's training data, or a model version's
first succeeded run) and are reused for every later run, so PSI compares like with
like:

* **numeric** features: the reference deciles are the interior edges (``n_bins=10``
  gives 9 edges; equal edges collapse into one, so a feature with many ties gets
  fewer bins). Bins are closed on the right: bin 0 is ``(-inf, e0]``, bin ``i`` is
  ``(e[i-1], e[i]]`` and the last interval is ``(e[-1], +inf]`` (``+inf`` values
  land there, ``-inf`` in bin 0). Then one NULL bin (``None``/``NaN``/``NaT``).
  Values that are not numbers (text that does not parse) count as NULL.
  Datetimes are profiled as numbers: seconds since 1970-01-01 UTC (timezone-naive
  values are taken as UTC); timedeltas as seconds.
* **categorical** features: one bin per *named* category, then ``other``, then NULL.
  A category is named only if the reference holds it in at least
  ``min_category_rows`` rows (default 20), and at most ``max_categories`` of the most
  frequent are named; anything else counts in ``other``. Values are compared as
  text: ``True``/``False`` for booleans, ``7`` for an integral number (``7.0`` too),
  ISO dates, else ``str(value)`` (the same text forms the model's text features get).

Which kind a column is: the ``kinds`` mapping the caller passes (``"numeric"`` or
``"text"``, as ``batch_scorer.models.features.fitted_kinds`` gives, or
``"categorical"``), else inferred from the reference column's dtype (numbers,
datetimes and timedeltas are numeric; anything else categorical). Booleans are
always categorical.

The score is profiled as the numeric column :data:`SCORE` and a classifier's
predicted class as the categorical column :data:`PREDICTION`: the caller adds them to
the frame it passes to :meth:`Profile.update`. Pass the same representation to the
reference and to every run (e.g. the features as the model sees them).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from batch_scorer.errors import SourceError
from batch_scorer.storage.profiles import PROFILE_COLUMNS

NUMERIC = "numeric"
CATEGORICAL = "categorical"
SCORE = "score"
PREDICTION = "prediction"
OTHER_LABEL = "other"
NULL_LABEL = "NULL"
# Kinds the caller may pass (models.features gives "numeric"/"text").
_CATEGORICAL_KINDS = {"text", CATEGORICAL}
_NUMERIC_INFERRED = {"integer", "floating", "mixed-integer-float", "decimal", "date", "datetime", "datetime64"}
_DATE_INFERRED = {"date", "datetime", "datetime64"}


@dataclass(frozen=True)
class Bin:
    """One bin as a table row: ``role`` is ``range``, ``category``, ``other`` or ``null``."""

    index: int
    role: str
    lower: float | None = None
    upper: float | None = None
    category: str | None = None

    @property
    def label(self) -> str:
        """How a report names the bin: ``(lower, upper]``, the category, ``other`` or NULL
        (made when asked: publishing a profile's rows never needs it)."""
        if self.role == "range" and self.lower is not None and self.upper is not None:
            return f"({_num(self.lower)}, {_num(self.upper)}]"
        if self.role == "category":
            return str(self.category)
        return OTHER_LABEL if self.role == "other" else NULL_LABEL


@dataclass(frozen=True)
class FeatureBins:
    """The bins of one feature: numeric ``edges`` (interior, sorted) or named ``categories``.

    Layout by index: numeric ``len(edges) + 1`` intervals then NULL; categorical the
    named categories, then ``other``, then NULL. The NULL bin is always the last.
    """

    feature: str
    kind: str
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in (NUMERIC, CATEGORICAL):
            raise ValueError(f"feature {self.feature!r}: kind must be 'numeric' or 'categorical', not {self.kind!r}")
        if self.kind == NUMERIC and any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"feature {self.feature!r}: edges must be strictly increasing")

    @property
    def size(self) -> int:
        """Number of bins, the NULL bin (and ``other``) included."""
        if self.kind == NUMERIC:
            return len(self.edges) + 2
        return len(self.categories) + 2

    @functools.cached_property
    def bins(self) -> tuple[Bin, ...]:
        """Every bin with its index, label and bounds or category, in index order (built once)."""
        if self.kind == NUMERIC:
            bounds = (-math.inf, *self.edges, math.inf)
            out = [
                Bin(i, "range", lower=lo, upper=hi)
                for i, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False))
            ]
        else:
            out = [Bin(i, "category", category=c) for i, c in enumerate(self.categories)]
            out.append(Bin(len(out), "other"))
        out.append(Bin(len(out), "null"))
        return tuple(out)

    @functools.cached_property
    def stored_bins(self) -> tuple[tuple[int, float | None, float | None, str | None], ...]:
        """``(index, lower, upper, category)`` of every bin, as :attr:`bins` has them (what a
        stored row holds; plain tuples, cheaper to build than the Bin objects)."""
        if self.kind == NUMERIC:
            bounds = (-math.inf, *self.edges, math.inf)
            out: list[tuple[int, float | None, float | None, str | None]] = [
                (i, lo, hi, None) for i, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False))]
        else:
            out = [(i, None, None, c) for i, c in enumerate(self.categories)]
            out.append((len(out), None, None, None))
        out.append((len(out), None, None, None))
        return tuple(out)

    def count(self, values: pd.Series) -> np.ndarray:
        """Counts per bin (int64, length :attr:`size`) of one column; vectorised."""
        if self.kind == NUMERIC:
            x = numeric_values(values)
            nulls = int(np.count_nonzero(np.isnan(x)))
            # Rows <= each edge (NaN is never <=), then differences: e[i-1] < x <= e[i],
            # closed on the right. One vectorised comparison per edge is 15x faster than
            # np.searchsorted on unsorted values (0.08 ms vs 1.1 ms for 50,000 rows, 9 edges).
            at_most = [np.count_nonzero(x <= edge) for edge in self.edges]
            counts = np.diff(np.array([0, *at_most, x.size - nulls, 0], dtype="int64"))
            counts[-1] = nulls
            return counts
        return self.count_categories(category_counts(values))

    def count_categories(self, counted: tuple[pd.Index, np.ndarray, int]) -> np.ndarray:
        """:meth:`count` of a categorical feature from its :func:`category_counts` (which
        several jobs reading the same chunk share)."""
        keys, per_key, nulls = counted
        slot = pd.Index(self.categories, dtype=object).get_indexer(keys)
        slot[slot < 0] = len(self.categories)  # other
        counts = np.bincount(slot, weights=per_key, minlength=self.size).astype("int64")
        counts[-1] = nulls
        return counts

    @staticmethod
    def count_numeric(bins: Sequence[FeatureBins], values: np.ndarray) -> list[np.ndarray]:
        """:meth:`count` of many numeric features at once: ``values`` holds one float64 column
        per feature (NaN for NULL), ``bins`` that feature's bins, all with the same number of
        edges. One comparison for the whole chunk instead of one per feature and edge (what
        costs a small chunk: the calls, not the rows)."""
        if not bins:
            return []
        edges = np.array([b.edges for b in bins], dtype="float64")  # features x edges
        columns = np.ascontiguousarray(values.T)  # features x rows: each count runs along memory
        if columns.shape[1] < _ONE_CALL_ROWS:
            at_most = np.count_nonzero(columns[:, None, :] <= edges[:, :, None], axis=2)
        else:  # no features x edges x rows temporary: 6x faster on 50,000 rows
            at_most = np.array([[np.count_nonzero(col <= e) for e in feature_edges]
                                for col, feature_edges in zip(columns, edges, strict=True)]).reshape(edges.shape)
        nulls = np.count_nonzero(np.isnan(columns), axis=1)
        total = values.shape[0] - nulls
        zeros = np.zeros((len(bins), 1), dtype="int64")
        stacked = np.hstack([zeros, at_most.astype("int64"), total[:, None].astype("int64"), zeros])
        counts = np.diff(stacked, axis=1)
        counts[:, -1] = nulls
        return list(counts)

    @classmethod
    def from_rows(cls, feature: str, rows: Iterable[Mapping[str, Any]]) -> FeatureBins:
        """Rebuild from stored rows (``bin``, ``lower``, ``upper``, ``category``) of one feature.

        Numeric iff some row has a ``lower`` bound (numeric intervals always have
        both, ``-inf``/``+inf`` at the ends).
        """
        ordered = sorted(rows, key=lambda r: int(r["bin"]))
        return cls.from_stored(feature, [int(r["bin"]) for r in ordered],
                               [(r.get("lower"), r.get("upper"), r.get("category")) for r in ordered])

    @classmethod
    def from_stored(cls, feature: str, numbers: Sequence[int],
                    bounds: Sequence[tuple[float | None, float | None, str | None]]) -> FeatureBins:
        """:meth:`from_rows` of bins in order: their numbers and ``(lower, upper, category)``."""
        if list(numbers) != list(range(len(numbers))) or len(numbers) < 2:
            raise ValueError(f"feature {feature!r}: stored bins must be numbered 0..n-1 with n >= 2")
        if any(lower is not None for lower, _, _ in bounds):
            return cls(feature, NUMERIC, edges=tuple(float(upper) for _, upper, _ in bounds[:-2]))  # type: ignore[arg-type]
        return cls(feature, CATEGORICAL, categories=tuple(str(category) for _, _, category in bounds[:-2]))


# Below this many rows a chunk's numeric features are counted in one call (the calls are what
# a small chunk costs); above, feature by feature and edge by edge (1,000 rows x 20 features:
# 0.13 ms in one call, 0.22 ms by feature; 50,000 rows: 4.7 ms, 1.6 ms).
_ONE_CALL_ROWS = 2_000


def _num(value: float) -> str:
    return "-inf" if value == -math.inf else "inf" if value == math.inf else f"{value:.4g}"


def numeric_values(values: pd.Series) -> np.ndarray:
    """A column as float64 with NaN for NULL; datetimes as epoch seconds, non-numbers as NaN."""
    dtype = values.dtype
    if dtype == np.float64 and isinstance(dtype, np.dtype):
        return values.to_numpy()  # NaN is NULL already: no copy
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return _epoch_seconds(values)
    if pd.api.types.is_timedelta64_dtype(dtype):
        return values.dt.total_seconds().to_numpy(dtype="float64", na_value=np.nan)
    if pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
        return values.to_numpy(dtype="float64", na_value=np.nan)
    if pd.api.types.infer_dtype(values, skipna=True) in _DATE_INFERRED:
        return _epoch_seconds(pd.to_datetime(values, errors="coerce", utc=True))
    return pd.to_numeric(values.astype(object), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def _epoch_seconds(values: pd.Series) -> np.ndarray:
    if getattr(values.dt, "tz", None) is not None:
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    stamps = values.to_numpy(dtype="datetime64[us]")
    out = stamps.astype("int64").astype("float64") / 1e6
    out[np.isnat(stamps)] = np.nan
    return out


def category_counts(values: pd.Series) -> tuple[pd.Index, np.ndarray, int]:
    """``(keys, counts, nulls)``: each distinct value's text key, its row count, and NULL rows.

    Vectorised: ``pd.factorize`` codes the rows; only the distinct values are turned
    into text (one Python call per distinct value, not per row).
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    valid = codes >= 0
    per_unique = np.bincount(codes[valid], minlength=len(uniques))
    nulls = int(len(codes) - valid.sum())
    if pd.api.types.infer_dtype(uniques, skipna=True) in ("string", "empty"):
        return pd.Index(np.asarray(uniques, dtype=object), dtype=object), per_unique, nulls
    keys = pd.Series(per_unique, index=pd.Index([category_text(u) for u in uniques], dtype=object))
    if keys.index.is_unique:
        return keys.index, keys.to_numpy(), nulls
    merged = keys.groupby(level=0, sort=False).sum()  # 7 and 7.0 and "7" are one category
    return merged.index, merged.to_numpy(), nulls


def category_text(value: Any) -> str:
    """The text a categorical value is compared as (booleans, integral numbers, dates)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, pd.Timestamp) and value == value.normalize() and value.tz is None:
        return value.date().isoformat()
    isoformat = getattr(value, "isoformat", None)
    return str(isoformat()) if callable(isoformat) else str(value)


def feature_kind(values: pd.Series, declared: str | None) -> str:
    """``numeric`` or ``categorical`` for one column: booleans and ``text`` are categorical,
    ``numeric`` is numeric, anything else is inferred from the dtype."""
    if declared in _CATEGORICAL_KINDS or pd.api.types.is_bool_dtype(values.dtype):
        return CATEGORICAL
    if declared == NUMERIC:
        return NUMERIC
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return CATEGORICAL
    if (
        pd.api.types.is_numeric_dtype(dtype)
        or pd.api.types.is_datetime64_any_dtype(dtype)
        or pd.api.types.is_timedelta64_dtype(dtype)
    ):
        return NUMERIC
    if pd.api.types.is_object_dtype(dtype) and pd.api.types.infer_dtype(values, skipna=True) in _NUMERIC_INFERRED:
        return NUMERIC
    return CATEGORICAL


def decile_edges(values: np.ndarray, n_bins: int) -> tuple[float, ...]:
    """The ``n_bins - 1`` interior quantile edges of the finite values, equal ones collapsed."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, not {n_bins}")
    finite = values[np.isfinite(values)]
    if finite.size == 0 or n_bins == 1:
        return ()
    edges = np.unique(np.quantile(finite, np.arange(1, n_bins) / n_bins))
    return tuple(float(e) for e in edges)


def named_categories(counts: pd.Series, min_rows: int, max_categories: int) -> tuple[str, ...]:
    """Categories held in at least ``min_rows`` rows, most frequent first (ties by name)."""
    kept = counts[counts >= min_rows]
    order = sorted(zip(kept.index, kept.to_numpy(), strict=True), key=lambda kv: (-kv[1], str(kv[0])))
    return tuple(str(k) for k, _ in order[:max_categories])


def profiled_kinds(feature_kinds: Mapping[str, str], classifier: bool) -> dict[str, str]:
    """The kinds to profile a run with: the model's feature kinds, the score (numeric) and,
    for a classifier, the predicted class (categorical, whatever its dtype)."""
    kinds = dict(feature_kinds)
    kinds[SCORE] = NUMERIC
    if classifier:
        kinds[PREDICTION] = CATEGORICAL
    return kinds


def bins_from_reference(
    frame: pd.DataFrame,
    kinds: Mapping[str, str],
    n_bins: int = 10,
    min_category_rows: int = 20,
    max_categories: int = 200,
) -> dict[str, FeatureBins]:
    """The bins of every column of an in-memory reference (e.g. a notebook's training data).

    Exact: deciles over all the column's finite values, categories by exact counts.
    """
    out: dict[str, FeatureBins] = {}
    for name in frame.columns:
        col = frame[name]
        feature = str(name)
        if feature_kind(col, kinds.get(feature)) == NUMERIC:
            out[feature] = FeatureBins(feature, NUMERIC, edges=decile_edges(numeric_values(col), n_bins))
        else:
            keys, counts, _ = category_counts(col)
            named = named_categories(pd.Series(counts, index=keys), min_category_rows, max_categories)
            out[feature] = FeatureBins(feature, CATEGORICAL, categories=named)
    return out


class Profile:
    """Counts per bin of each feature, added chunk by chunk.

    State: one int64 array of :attr:`FeatureBins.size` per feature, whatever the
    number of rows.
    """

    def __init__(self, bins: Mapping[str, FeatureBins]) -> None:
        """Empty counts for each feature's bins."""
        self.bins: dict[str, FeatureBins] = dict(bins)
        self._counts: dict[str, np.ndarray] = {f: np.zeros(b.size, dtype="int64") for f, b in self.bins.items()}

    def update(self, frame: pd.DataFrame) -> None:
        """Add one chunk's rows; every profiled feature must be a column of ``frame``."""
        missing = [f for f in self.bins if f not in frame.columns]
        if missing:
            raise SourceError(
                f"monitoring: the chunk has no column {missing[0]!r}, which the profile counts "
                f"(profiled: {', '.join(sorted(self.bins))}); profile the same columns as the reference"
            )
        for feature, fbins in self.bins.items():
            self._counts[feature] += fbins.count(frame[feature])

    def merge(self, other: Profile) -> Profile:
        """Add ``other``'s counts (a partial of the same bins, e.g. one chunk's) into this one."""
        if other.bins != self.bins:
            raise ValueError("only profiles of the same bins merge (one reference, one set of bins)")
        for feature, counts in other._counts.items():
            self._counts[feature] += counts
        return self

    def counts(self, feature: str) -> np.ndarray:
        """A copy of the counts per bin of ``feature`` (the NULL bin last)."""
        return self._counts[feature].copy()

    def rows(self, feature: str) -> int:
        """Rows counted for ``feature`` (NULLs included)."""
        return int(self._counts[feature].sum())

    def arrays(self) -> list[np.ndarray]:
        """The numpy arrays the profile holds (its whole state)."""
        return list(self._counts.values())

    def to_tuples(self) -> Iterator[tuple[Any, ...]]:
        """One tuple per bin of the stored columns (``PROFILE_COLUMNS``: feature, kind, bin,
        lower, upper, category, rows): what a run publishes, ~250 rows, with no dict per row."""
        for feature, fbins in self.bins.items():
            counts = self._counts[feature].tolist()  # Python ints, converted at once
            kind = fbins.kind
            for (index, lower, upper, category), rows in zip(fbins.stored_bins, counts, strict=True):
                yield feature, kind, index, lower, upper, category, rows

    def to_rows(self, with_kind: bool = False) -> Iterator[dict[str, Any]]:
        """:meth:`to_tuples` as plain dicts ``feature, bin, lower, upper, category, rows``,
        one per bin (and ``kind`` if ``with_kind``).

        Numeric intervals carry ``lower``/``upper`` (``-inf``/``inf`` at the ends, which
        PostgreSQL and SQLite both store); the NULL and ``other`` bins carry neither,
        and are told apart by position (NULL is last).
        """
        for feature, kind, index, lower, upper, category, rows in self.to_tuples():
            row = {"feature": feature, "bin": index, "lower": lower, "upper": upper, "category": category,
                   "rows": rows}
            if with_kind:
                row["kind"] = kind
            yield row

    @classmethod
    def from_counts(cls, bins: Mapping[str, FeatureBins], counts: Mapping[str, Sequence[int]]) -> Profile:
        """A profile with the given counts per feature (each as long as its bins)."""
        profile = cls(bins)
        for feature, fbins in profile.bins.items():
            values = np.asarray(counts.get(feature, ()), dtype="int64")
            if values.shape != (fbins.size,):
                raise ValueError(f"feature {feature!r}: {values.size} counts for {fbins.size} bins")
            profile._counts[feature] = values.copy()
        return profile

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> Profile:
        """Rebuild a stored profile from rows as :meth:`to_rows` gives them."""
        return cls.from_tuples(tuple(row.get(c) for c in PROFILE_COLUMNS) for row in rows)

    @classmethod
    def from_tuples(cls, rows: Iterable[Sequence[Any]]) -> Profile:
        """:meth:`from_rows` of rows as tuples of the stored columns (``PROFILE_COLUMNS``:
        feature, kind, bin, lower, upper, category, rows), as a fleet's planning reads
        ~100,000 of them: no dict per row."""
        by_feature: dict[str, list[Sequence[Any]]] = {}
        for row in rows:
            by_feature.setdefault(str(row[_FEATURE]), []).append(row)
        bins: dict[str, FeatureBins] = {}
        counts: dict[str, list[int]] = {}
        for feature, stored in by_feature.items():
            stored = sorted(stored, key=lambda r: int(r[_BIN]))
            bins[feature] = FeatureBins.from_stored(feature, [int(r[_BIN]) for r in stored],
                                                    [(r[_LOWER], r[_UPPER], r[_CATEGORY]) for r in stored])
            counts[feature] = [int(r[_ROWS]) for r in stored]
        return cls.from_counts(bins, counts)


_FEATURE, _BIN, _LOWER, _UPPER, _CATEGORY, _ROWS = (
    PROFILE_COLUMNS.index(c) for c in ("feature", "bin", "lower", "upper", "category", "rows"))


class _NumericSample:
    """A uniform sample without replacement of at most ``size`` non-NULL values.

    Bottom-k sampling: every value gets a uniform random key and the ``size``
    smallest keys are kept, so each value is equally likely to be in the sample
    however the stream is chunked. Candidates gather in a buffer of at most
    ``2 * size`` values, partitioned when it fills or when the sample is read:
    merging many partials then costs one partition every few chunks, not one each.
    """

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size = size
        self.rng = rng
        self._values = np.empty(0, dtype="float64")
        self._keys = np.empty(0, dtype="float64")

    @property
    def values(self) -> np.ndarray:
        """The sample: the values of the ``size`` smallest keys."""
        self._keep(self._values, self._keys, final=True)
        return self._values

    @property
    def buffered(self) -> int:
        """Values held (the memory the sample takes): at most ``2 * size``."""
        return int(self._values.size)

    def add(self, x: np.ndarray, rows: _RowKeys | None = None) -> None:
        """Add values (NaN skipped); ``rows``: the chunk's row keys, drawn here when not given."""
        valid = ~np.isnan(x)
        if rows is None:
            x = x[valid]
            self._keep(np.concatenate([self._values, x]), np.concatenate([self._keys, self.rng.random(x.size)]))
            return
        if rows.order is None:  # a chunk no larger than the sample: every value is a candidate
            picked = np.flatnonzero(valid)
        elif valid.all():  # the rows of the smallest keys: at most `size` can stay
            picked = rows.order[: self.size]
        else:  # the same among the non-NULL rows
            picked = rows.order[valid[rows.order]][: self.size]
        self._keep(np.concatenate([self._values, x[picked]]), np.concatenate([self._keys, rows.keys[picked]]))

    def merge(self, other: _NumericSample) -> None:
        """The bottom-k of both: a uniform sample of the union (the keys are uniform in both)."""
        self._keep(np.concatenate([self._values, other._values]), np.concatenate([self._keys, other._keys]))

    def _keep(self, values: np.ndarray, keys: np.ndarray, final: bool = False) -> None:
        if values.size > (self.size if final else 2 * self.size):
            keep = np.argpartition(keys, self.size - 1)[: self.size]
            values, keys = values[keep], keys[keep]
        self._values, self._keys = values, keys


class _RowKeys:
    """One chunk's random row keys, shared by its numeric features, sorted once when the
    chunk holds more rows than a sample keeps (each feature then takes its first
    non-NULL rows in that order instead of partitioning all of its values)."""

    def __init__(self, rng: np.random.Generator, rows: int, size: int) -> None:
        if rows <= size:
            self.keys, self.order = rng.random(rows), None
            return
        # Sorted uniform keys without a sort: the normalised partial sums of n + 1
        # exponentials are distributed as n sorted uniforms; a random permutation says
        # which row gets each (row order[i] has the i-th smallest key).
        sums = np.cumsum(rng.standard_exponential(rows + 1))
        self.order = rng.permutation(rows)
        self.keys = np.empty(rows)
        self.keys[self.order] = sums[:-1] / sums[-1]


class _HeavyHitters:
    """Misra-Gries counts of at most ``counters`` categories (merged chunk by chunk).

    Counts are lower bounds of the true counts, each short by at most
    :attr:`shortfall` (the sum of the decrements), which is at most
    ``rows / (counters + 1)``; while no more than ``counters`` distinct values
    have been seen the counts are exact.
    """

    def __init__(self, counters: int) -> None:
        self.counters = counters
        self.summary = pd.Series(dtype="int64", index=pd.Index([], dtype=object))
        self.shortfall = 0

    def merge(self, other: _HeavyHitters) -> None:
        """Merge another summary (Agarwal et al.'s mergeable Misra-Gries: the bound still holds)."""
        self.shortfall += other.shortfall
        self.add(other.summary.index, other.summary.to_numpy())

    def add(self, keys: pd.Index, counts: np.ndarray) -> None:
        merged = self.summary.add(pd.Series(counts, index=keys, dtype="int64"), fill_value=0).astype("int64")
        if len(merged) > self.counters:
            # Subtract the (counters+1)-th largest count from every counter and drop
            # the ones left at zero or below: at most `counters` remain.
            cut = int(np.partition(merged.to_numpy(), len(merged) - self.counters - 1)[len(merged) - self.counters - 1])
            merged = merged - cut
            merged = merged[merged > 0]
            self.shortfall += cut
        self.summary = merged


class ReferenceSketch:
    """Builds a reference's bins in one streaming pass, in bounded memory.

    For a model version with no reference data: its first succeeded run's chunks
    are fed to :meth:`update` and :meth:`bins` gives the bins for every later run;
    :meth:`profile` the run's own counts in those bins (see there).

    Approximation: numeric deciles are those of a uniform sample of at most
    ``sample_size`` values per feature (exact while the feature has fewer non-NULL
    values); the rank error of each decile is about ``0.5 / sqrt(sample_size)``
    (about 0.4 percentage points for 20,000). Categories come from Misra-Gries
    counters (``counters`` per feature) whose counts never exceed the true ones, so
    a category held by fewer than ``min_category_rows`` rows is never named; one
    held by more may be missed only if its count is below ``min_category_rows`` plus
    ``rows / (counters + 1)`` (never while the feature has at most ``counters``
    distinct values). The sample seed is fixed: same chunks, same bins.
    Memory per feature: at most ``2 * sample_size`` values and keys (the sample's
    buffer) or ``counters`` categories, whatever the number of rows. A feature's
    kind is decided at the first chunk (pass ``kinds`` to decide it up front:
    partial sketches then always agree).

    Sketches merge (:meth:`merge`): one per chunk, computed wherever the chunk is
    scored (a Dask worker), added into one on the driver. Give each partial its own
    ``seed`` (e.g. from the chunk's content) so the partial samples are independent.
    """

    def __init__(
        self,
        kinds: Mapping[str, str] | None = None,
        features: Sequence[str] | None = None,
        *,
        n_bins: int = 10,
        min_category_rows: int = 20,
        max_categories: int = 200,
        sample_size: int = 20_000,
        counters: int = 1_000,
        seed: int = 0,
    ) -> None:
        """Sketch ``features`` (default: every column of the first chunk); ``kinds`` as for
        :func:`bins_from_reference`."""
        if sample_size < 1 or counters < 1:
            raise ValueError("sample_size and counters must be at least 1")
        self.kinds = dict(kinds or {})
        self.features = list(features) if features is not None else None
        self.n_bins, self.min_category_rows, self.max_categories = n_bins, min_category_rows, max_categories
        self.sample_size, self.counters = sample_size, counters
        self.rng = np.random.default_rng(seed)
        self.numeric: dict[str, _NumericSample] = {}
        self.categorical: dict[str, _HeavyHitters] = {}
        self.nulls: dict[str, int] = {}  # NULL rows per feature (exact)
        self.rows = 0

    def update(self, frame: pd.DataFrame | Mapping[str, pd.Series]) -> None:
        """Add one chunk: a DataFrame, or its columns by name (Series of equal length)."""
        names = [str(c) for c in (frame.columns if isinstance(frame, pd.DataFrame) else frame)]
        if self.features is None:
            self.features = names
        length = len(frame) if isinstance(frame, pd.DataFrame) else len(next(iter(frame.values()), ()))
        keys: _RowKeys | None = None  # one random key per row, shared by the numeric features
        for feature in self.features:
            if feature not in names:
                raise SourceError(f"monitoring: the chunk has no column {feature!r}, which the reference sketch counts")
            col = frame[feature]
            if feature not in self.numeric and feature not in self.categorical:
                self._start(feature, feature_kind(col, self.kinds.get(feature)))
            if feature in self.numeric:
                x = numeric_values(col)
                keys = keys or _RowKeys(self.rng, length, self.sample_size)
                self.numeric[feature].add(x, keys)
                nulls = int(np.count_nonzero(np.isnan(x)))
            else:
                values, counts, nulls = category_counts(col)
                self.categorical[feature].add(values, counts)
            self.nulls[feature] = self.nulls.get(feature, 0) + nulls
        self.rows += length

    def _start(self, feature: str, kind: str) -> None:
        if kind == NUMERIC:
            self.numeric[feature] = _NumericSample(self.sample_size, self.rng)
        else:
            self.categorical[feature] = _HeavyHitters(self.counters)

    def merge(self, other: ReferenceSketch) -> ReferenceSketch:
        """Add another sketch of the same features (e.g. one chunk's partial) into this one."""
        if self.features is None:
            self.features = list(other.features or [])
        for feature in other.features or []:
            kind = NUMERIC if feature in other.numeric else CATEGORICAL
            if feature not in self.numeric and feature not in self.categorical:
                self._start(feature, kind)
            if (feature in self.numeric) != (kind == NUMERIC):
                raise ValueError(f"feature {feature!r}: numeric in one sketch, categorical in the other")
            if kind == NUMERIC:
                self.numeric[feature].merge(other.numeric[feature])
            else:
                self.categorical[feature].merge(other.categorical[feature])
            self.nulls[feature] = self.nulls.get(feature, 0) + other.nulls.get(feature, 0)
        self.rows += other.rows
        return self

    def bins(self) -> dict[str, FeatureBins]:
        """The bins of every sketched feature, in the order of :attr:`features`."""
        out: dict[str, FeatureBins] = {}
        for feature in self.features or []:
            if feature in self.numeric:
                edges = decile_edges(self.numeric[feature].values, self.n_bins)
                out[feature] = FeatureBins(feature, NUMERIC, edges=edges)
            elif feature in self.categorical:
                summary = self.categorical[feature].summary
                named = named_categories(summary, self.min_category_rows, self.max_categories)
                out[feature] = FeatureBins(feature, CATEGORICAL, categories=named)
        return out

    def profile(self) -> Profile:
        """The sketched rows counted in :meth:`bins`: the profile of the reference itself.

        NULL counts and each feature's row count are exact. The other counts are
        exact while a numeric feature has at most ``sample_size`` non-NULL values and
        a categorical one at most ``counters`` distinct values; beyond that they are
        estimates: the sample's counts scaled to the non-NULL rows (largest
        remainders, so they add up), and Misra-Gries lower bounds for the named
        categories with ``other`` holding the rest.
        """
        bins = self.bins()
        counts: dict[str, np.ndarray] = {}
        for feature, fbins in bins.items():
            nulls = self.nulls.get(feature, 0)
            present = self.rows - nulls
            if feature in self.numeric:
                sample = self.numeric[feature].values
                counts[feature] = _scaled(fbins.count(pd.Series(sample)), present)
            else:
                summary = self.categorical[feature].summary
                named = summary.reindex(list(fbins.categories), fill_value=0).to_numpy(dtype="int64")
                counts[feature] = np.concatenate([named, [present - int(named.sum())], [0]])
            counts[feature][-1] = nulls
        return Profile.from_counts(bins, counts)


def _scaled(sample_counts: np.ndarray, total: int) -> np.ndarray:
    """Counts of a sample (NULL bin last, 0) scaled to ``total`` rows by largest remainders."""
    out = np.zeros_like(sample_counts)
    size = int(sample_counts.sum())
    if size == 0 or total <= 0:
        return out
    exact = sample_counts.astype("float64") * (total / size)
    out = np.floor(exact).astype("int64")
    short = total - int(out.sum())
    if short:
        out[np.argsort(-(exact - out), kind="stable")[:short]] += 1
    return out
