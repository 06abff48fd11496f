"""Feature profiles: decile bins and category bins count exactly what an independent
computation counts, stay the same size whatever the row count, survive a round trip
through a real database table, and the streaming reference sketch approximates the
exact reference closely."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from batch_scorer.errors import SourceError
from batch_scorer.monitoring.profile import (
    CATEGORICAL,
    NUMERIC,
    PREDICTION,
    SCORE,
    FeatureBins,
    Profile,
    ReferenceSketch,
    bins_from_reference,
    profiled_kinds,
)
from batch_scorer.storage.db import create_engine
from batch_scorer.storage.profiles import PROFILE_COLUMNS
from tests.helpers import FEATURES, features_frame, train


def _state_bytes(profile: Profile) -> int:
    return sum(a.nbytes for a in profile.arrays())


def test_numeric_bins_are_reference_deciles_closed_on_the_right() -> None:
    rng = np.random.default_rng(3)
    ref = rng.normal(10, 2, 5_000)
    cur = np.concatenate([rng.normal(11, 2, 3_000), [np.nan] * 7, [np.inf, -np.inf]])
    bins = bins_from_reference(pd.DataFrame({"x": ref}), {"x": "numeric"})["x"]
    expected_edges = np.percentile(ref, [10, 20, 30, 40, 50, 60, 70, 80, 90])
    assert bins.kind == NUMERIC
    assert np.allclose(bins.edges, expected_edges)

    profile = Profile({"x": bins})
    profile.update(pd.DataFrame({"x": cur[:1_000]}))
    profile.update(pd.DataFrame({"x": cur[1_000:]}))

    # Independent count, value by value: bin i holds lower < x <= upper (-inf in bin 0),
    # NaN in the last (NULL) bin.
    bounds = [-math.inf, *expected_edges, math.inf]
    expected = [0] * (len(bounds) - 1) + [0]
    for v in cur:
        if np.isnan(v):
            expected[-1] += 1
            continue
        for i, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
            if lo < v <= hi or (i == 0 and v == -math.inf):
                expected[i] += 1
                break
    assert profile.counts("x").tolist() == expected
    assert profile.rows("x") == len(cur)
    # A value exactly on an edge falls in the bin the edge closes.
    edge_profile = Profile({"x": bins})
    edge_profile.update(pd.DataFrame({"x": [expected_edges[0], expected_edges[0] + 1e-9]}))
    assert edge_profile.counts("x")[:2].tolist() == [1, 1]


def test_duplicate_deciles_collapse_into_one_edge() -> None:
    values = np.array([0.0] * 700 + list(range(1, 301)), dtype=float)
    bins = bins_from_reference(pd.DataFrame({"x": values}), {})["x"]
    assert bins.edges[0] == 0.0 and len(set(bins.edges)) == len(bins.edges) < 9
    profile = Profile({"x": bins})
    profile.update(pd.DataFrame({"x": values}))
    assert profile.counts("x")[0] == 700  # every zero in (-inf, 0]


def test_category_bins_count_reference_categories_other_and_null() -> None:
    ref = pd.DataFrame({"c": ["a"] * 50 + ["b"] * 20 + ["rare"] * 19 + [None] * 5})
    bins = bins_from_reference(ref, {"c": "text"})["c"]
    assert bins.kind == CATEGORICAL
    assert bins.categories == ("a", "b")  # 'b' has exactly 20 rows: named; 'rare' 19: not
    assert [b.label for b in bins.bins] == ["a", "b", "other", "NULL"]

    cur = pd.Series(["a", "rare", "new", None, float("nan"), "b", "b"], dtype=object)
    profile = Profile({"c": bins})
    profile.update(pd.DataFrame({"c": cur}))
    assert profile.counts("c").tolist() == [1, 2, 2, 2]


def test_category_below_twenty_reference_rows_is_never_named_exact_or_streamed() -> None:
    rng = np.random.default_rng(5)
    values = np.array(["common"] * 5_000 + ["rare"] * 19 + [f"id{i}" for i in range(3_000)], dtype=object)
    rng.shuffle(values)
    frame = pd.DataFrame({"c": values})
    sketch = ReferenceSketch({"c": "text"}, counters=50)
    for start in range(0, len(frame), 700):
        sketch.update(frame.iloc[start : start + 700])
    for bins in (bins_from_reference(frame, {"c": "text"})["c"], sketch.bins()["c"]):
        assert "rare" not in bins.categories
        assert all(b.category != "rare" for b in bins.bins)
        assert "common" in bins.categories
        profile = Profile({"c": bins})
        profile.update(pd.DataFrame({"c": ["rare"] * 3}))
        assert profile.counts("c")[bins.size - 2] == 3  # in `other`


def test_categories_compare_as_text_so_seven_and_7_0_are_one() -> None:
    ref = pd.DataFrame({"c": pd.Series([7] * 25 + ["x"] * 25, dtype=object)})
    bins = bins_from_reference(ref, {"c": "text"})["c"]
    assert set(bins.categories) == {"7", "x"}
    profile = Profile({"c": bins})
    profile.update(pd.DataFrame({"c": pd.Series([7.0, "7", 7, "x"], dtype=object)}))
    assert profile.counts("c")[list(bins.categories).index("7")] == 3


def test_kinds_booleans_categorical_datetimes_numeric_epoch_seconds_unknown_inferred() -> None:
    n = 40
    frame = pd.DataFrame(
        {
            "flag": [True, False] * (n // 2),
            "when": pd.date_range("2026-01-01", periods=n, freq="D"),
            "day": [dt.date(2026, 1, 1) + dt.timedelta(days=i) for i in range(n)],
            "amount": pd.Series([float(i) for i in range(n)], dtype=object),
            "code": np.arange(n) % 2,
        }
    )
    bins = bins_from_reference(frame, {"flag": "numeric", "code": "text"})
    assert bins["flag"].kind == CATEGORICAL and bins["flag"].categories == ("False", "True")
    assert bins["code"].kind == CATEGORICAL and bins["code"].categories == ("0", "1")
    assert bins["amount"].kind == NUMERIC
    epoch = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
    for name in ("when", "day"):
        assert bins[name].kind == NUMERIC
        assert epoch < bins[name].edges[0] < epoch + n * 86_400
    profile = Profile(bins)
    profile.update(frame)
    assert profile.counts("when").tolist() == profile.counts("day").tolist()
    assert profile.counts("when")[-1] == 0


def test_score_and_predicted_class_of_a_real_classifier_are_profiled() -> None:
    model = train("binary")
    frame = features_frame(400, seed=2)[FEATURES]
    scored = frame.assign(**{SCORE: model.predict_proba(frame)[:, 1], PREDICTION: model.predict(frame)})
    kinds = profiled_kinds({"x1": "numeric", "x2": "numeric", "x3": "numeric", "color": "text"}, classifier=True)
    bins = bins_from_reference(scored, kinds)
    assert bins[SCORE].kind == NUMERIC and len(bins[SCORE].edges) == 9
    assert bins[PREDICTION].kind == CATEGORICAL and set(bins[PREDICTION].categories) == {"0", "1"}
    profile = Profile(bins)
    profile.update(scored)
    assert profile.counts(PREDICTION)[:2].sum() == 400


def test_profile_state_does_not_grow_with_rows() -> None:
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"x": rng.normal(size=2_000), "c": rng.choice(list("abcd"), 2_000)})
    bins = bins_from_reference(ref, {})
    small, large = Profile(bins), Profile(bins)
    small.update(ref.iloc[:1_000])
    chunk = pd.DataFrame({"x": rng.normal(size=100_000), "c": rng.choice(list("abcdefgh"), 100_000)})
    for _ in range(10):
        large.update(chunk)
    assert large.rows("x") == 1_000_000 and small.rows("x") == 1_000
    assert _state_bytes(small) == _state_bytes(large)
    assert [a.shape for a in small.arrays()] == [a.shape for a in large.arrays()]


def test_reference_sketch_memory_is_bounded_on_a_high_cardinality_stream() -> None:
    sketch = ReferenceSketch({}, sample_size=5_000, counters=200)
    for i in range(10):
        sketch.update(pd.DataFrame({"x": np.arange(50_000.0) + i, "c": [f"id{i}_{j}" for j in range(50_000)]}))
    assert sketch.numeric["x"].values.size == 5_000
    assert len(sketch.categorical["c"].summary) <= 200
    assert sketch.bins()["c"].categories == ()  # no id reaches 20 rows


def test_reference_sketch_deciles_are_close_to_the_exact_ones() -> None:
    rng = np.random.default_rng(11)
    values = rng.lognormal(0, 1, 1_000_000)
    values[rng.random(values.size) < 0.02] = np.nan
    sketch = ReferenceSketch({"x": "numeric"})
    for start in range(0, values.size, 100_000):
        sketch.update(pd.DataFrame({"x": values[start : start + 100_000]}))
    approx = np.array(sketch.bins()["x"].edges)
    finite = np.sort(values[~np.isnan(values)])
    assert np.allclose(approx, np.quantile(finite, np.arange(1, 10) / 10), rtol=0.05)
    # In rank terms: each approximate decile splits the data within 1 point of k/10.
    ranks = np.searchsorted(finite, approx, side="right") / finite.size
    assert np.abs(ranks - np.arange(1, 10) / 10).max() < 0.01


def test_reference_sketch_on_a_small_reference_equals_the_exact_bins() -> None:
    frame = features_frame(900, seed=4)[FEATURES]
    kinds = {"x1": "numeric", "x2": "numeric", "x3": "numeric", "color": "text"}
    sketch = ReferenceSketch(kinds)
    for start in range(0, 900, 250):
        sketch.update(frame.iloc[start : start + 250])
    assert sketch.bins() == bins_from_reference(frame, kinds)


def test_a_chunk_without_a_profiled_column_is_a_clear_error() -> None:
    bins = bins_from_reference(pd.DataFrame({"x1": [1.0, 2.0], "x2": [3.0, 4.0]}), {})
    with pytest.raises(SourceError, match="no column 'x2'"):
        Profile(bins).update(pd.DataFrame({"x1": [1.0]}))


def test_profile_rows_round_trip_through_a_real_table(db_url: str) -> None:
    frame = features_frame(300, seed=6)[FEATURES]
    profile = Profile(bins_from_reference(frame, {"color": "text"}))
    profile.update(frame)
    rows = list(profile.to_rows())
    assert set(rows[0]) == {"feature", "bin", "lower", "upper", "category", "rows"}
    engine = create_engine(db_url)
    try:
        table = sa.Table(
            "profile_round_trip",
            sa.MetaData(),
            sa.Column("feature", sa.Text),
            sa.Column("bin", sa.Integer),
            sa.Column("lower", sa.Float),
            sa.Column("upper", sa.Float),
            sa.Column("category", sa.Text),
            sa.Column("rows", sa.BigInteger),
        )
        with engine.begin() as conn:
            table.create(conn)
            conn.execute(table.insert(), rows)
        with engine.connect() as conn:
            stored = [dict(r._mapping) for r in conn.execute(sa.select(table))]
    finally:
        engine.dispose()
    rebuilt = Profile.from_rows(stored)
    assert rebuilt.bins == profile.bins
    for feature in profile.bins:
        assert rebuilt.counts(feature).tolist() == profile.counts(feature).tolist()


def test_the_tuples_a_run_publishes_are_its_rows_and_rebuild_the_same_profile() -> None:
    """What a run stores (Profile.to_tuples, in the table's column order) says what to_rows
    says, and planning's rebuild from stored tuples (from_tuples, rows in any order) gives
    the profile back: bins, bounds, categories, NULL and other bins, counts."""
    frame = features_frame(300, seed=7)[FEATURES]
    frame.loc[::7, "x1"] = np.nan
    profile = Profile(bins_from_reference(frame, {"color": "text"}))
    profile.update(frame)
    tuples = list(profile.to_tuples())
    as_rows = [tuple(r[c] for c in PROFILE_COLUMNS) for r in profile.to_rows(with_kind=True)]
    assert tuples == as_rows
    for fbins in profile.bins.values():
        assert fbins.stored_bins == tuple((b.index, b.lower, b.upper, b.category) for b in fbins.bins)
    rebuilt = Profile.from_tuples(reversed(tuples))
    assert rebuilt.bins == profile.bins
    for feature in profile.bins:
        assert rebuilt.counts(feature).tolist() == profile.counts(feature).tolist()


def test_from_counts_rejects_counts_of_the_wrong_length() -> None:
    bins = {"x": FeatureBins("x", NUMERIC, edges=(0.0, 1.0))}
    assert Profile.from_counts(bins, {"x": [1, 2, 3, 4]}).rows("x") == 10
    with pytest.raises(ValueError, match="3 counts for 4 bins"):
        Profile.from_counts(bins, {"x": [1, 2, 3]})


def test_counting_many_float_features_at_once_equals_counting_each() -> None:
    """The observer counts a chunk's float features with one comparison: the same counts as
    one feature at a time, NULLs, values on an edge and empty chunks included."""
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 500, 1_999, 2_000, 20_000):  # small chunks in one call, large ones by feature
        values = rng.normal(size=(n, 4))
        values[rng.random((n, 4)) < 0.1] = np.nan
        values[:, 0] = 0.5  # every row on an edge (bins are closed on the right)
        bins = [FeatureBins(f"f{i}", NUMERIC, edges=(-1.0, -0.2, 0.5, 1.3)) for i in range(4)]
        together = FeatureBins.count_numeric(bins, values)
        for i, fbins in enumerate(bins):
            assert together[i].tolist() == fbins.count(pd.Series(values[:, i])).tolist(), (n, i)
    constant = [FeatureBins("a", NUMERIC, edges=()), FeatureBins("b", NUMERIC, edges=())]
    column = np.array([[1.0, np.nan], [2.0, 3.0]])
    assert [c.tolist() for c in FeatureBins.count_numeric(constant, column)] == [[2, 0], [1, 1]]
    many = np.tile(column, (2_000, 1))
    assert [c.tolist() for c in FeatureBins.count_numeric(constant, many)] == [[4_000, 0], [2_000, 2_000]]
