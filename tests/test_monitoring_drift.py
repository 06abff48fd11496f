"""Drift: PSI equals the textbook formula computed independently, a shifted feature
alerts while the others stay ok, a column gone NULL alerts, and the previous run's
PSI is reported beside the reference's."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from batch_scorer.monitoring.drift import FeatureDrift, alerts, compare, describe, psi, status, summary
from batch_scorer.monitoring.profile import Profile, bins_from_reference


def _psi_by_hand(ref: list[int], cur: list[int], floor: float = 0.0001) -> float:
    total_ref, total_cur = sum(ref), sum(cur)
    out = 0.0
    for r, c in zip(ref, cur, strict=True):
        r_share = r / total_ref if r else floor
        c_share = c / total_cur if c else floor
        out += (c_share - r_share) * math.log(c_share / r_share)
    return out


def _frames(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x1": rng.normal(0, 1, n) + shift,
            "x2": rng.normal(5, 2, n),
            "color": rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2]),
        }
    )


def _profile(bins: dict, frame: pd.DataFrame) -> Profile:
    profile = Profile(bins)
    for start in range(0, len(frame), 1_000):
        profile.update(frame.iloc[start : start + 1_000])
    return profile


def test_psi_equals_the_formula_computed_by_hand() -> None:
    ref, cur = [100, 200, 300, 0, 400], [150, 150, 250, 50, 0]
    assert psi(ref, cur) == pytest.approx(_psi_by_hand(ref, cur), rel=1e-12)
    assert psi(ref, ref) == 0.0
    assert psi([0, 0], [1, 2]) == 0.0  # no reference rows: no evidence
    with pytest.raises(ValueError, match="same length"):
        psi([1, 2], [1, 2, 3])


def test_profile_psi_equals_an_independent_histogram_computation() -> None:
    reference, current = _frames(8_000, 1), _frames(5_000, 2, shift=0.3)
    bins = bins_from_reference(reference, {})
    drift = {d.feature: d for d in compare(_profile(bins, reference), _profile(bins, current))}

    # Independent: deciles by np.percentile; np.histogram counts [a, b) bins, so count
    # the mirrored values to get the profile's (a, b] bins; no NULLs in this data.
    edges = np.percentile(reference["x1"], np.arange(10, 100, 10))
    mirrored = np.concatenate([[-np.inf], -edges[::-1], [np.inf]])
    ref_counts = np.histogram(-reference["x1"].to_numpy(), mirrored)[0][::-1].tolist() + [0]
    cur_counts = np.histogram(-current["x1"].to_numpy(), mirrored)[0][::-1].tolist() + [0]
    assert _profile(bins, current).counts("x1").tolist() == cur_counts
    assert drift["x1"].psi_reference == pytest.approx(_psi_by_hand(ref_counts, cur_counts), rel=1e-9)

    colors = ["red", "green", "blue"]
    ref_c = [int((reference["color"] == c).sum()) for c in colors] + [0, 0]
    cur_c = [int((current["color"] == c).sum()) for c in colors] + [0, 0]
    assert drift["color"].psi_reference == pytest.approx(_psi_by_hand(ref_c, cur_c), rel=1e-9)


def test_a_feature_shifted_two_standard_deviations_alerts_and_the_others_stay_ok() -> None:
    reference = _frames(10_000, 1)
    bins = bins_from_reference(reference, {})
    drifts = compare(_profile(bins, reference), _profile(bins, _frames(5_000, 2, shift=2.0)))
    by_feature = {d.feature: d for d in drifts}
    assert by_feature["x1"].status == "alert" and by_feature["x1"].psi_reference > 1.0
    assert by_feature["x2"].status == "ok" and by_feature["color"].status == "ok"
    assert [d.feature for d in alerts(drifts)] == ["x1"]


def test_a_column_that_became_all_null_alerts() -> None:
    reference = _frames(5_000, 1)
    current = _frames(5_000, 2).assign(x2=np.nan, color=None)
    bins = bins_from_reference(reference, {})
    cur = _profile(bins, current)
    assert cur.counts("x2")[-1] == 5_000 and cur.counts("color")[-1] == 5_000
    by_feature = {d.feature: d for d in compare(_profile(bins, reference), cur)}
    assert by_feature["x2"].status == "alert" and by_feature["color"].status == "alert"
    assert by_feature["x1"].status == "ok"


def test_previous_run_psi_is_reported_beside_the_reference_psi() -> None:
    reference = _frames(8_000, 1)
    bins = bins_from_reference(reference, {})
    ref = _profile(bins, reference)
    previous = _profile(bins, _frames(5_000, 2, shift=1.0))
    current = _profile(bins, _frames(5_000, 3, shift=1.0))
    x1 = next(d for d in compare(ref, current, previous) if d.feature == "x1")
    assert x1.status == "alert"  # drifted from the reference...
    assert x1.psi_previous is not None and x1.psi_previous < 0.05  # ...but not since the last run
    assert x1.psi_previous == pytest.approx(psi(previous.counts("x1"), current.counts("x1")))
    assert all(d.psi_previous is None for d in compare(ref, current, None))


def test_status_thresholds_are_inclusive_from_warn_and_alert() -> None:
    assert [status(v) for v in (0.0, 0.0999, 0.1, 0.2499, 0.25, 3.0)] == ["ok", "ok", "warn", "warn", "alert", "alert"]
    assert status(0.15, warn=0.2, alert=0.3) == "ok"
    with pytest.raises(ValueError, match="warn_psi"):
        status(0.1, warn=0.5, alert=0.2)


def test_profiles_of_other_bins_are_not_compared() -> None:
    a = bins_from_reference(_frames(1_000, 1), {})
    b = bins_from_reference(_frames(1_000, 2, shift=3.0), {})
    with pytest.raises(ValueError, match="'x1'.*reference's bins"):
        compare(Profile(a), Profile(b))


def test_text_for_the_log_and_for_a_failing_run_names_features_and_psi() -> None:
    drifts = [
        FeatureDrift("x2", 0.41, None, "alert"),
        FeatureDrift("x1", 0.834, 0.01, "alert"),
        FeatureDrift("x3", 0.12, None, "warn"),
        FeatureDrift("color", 0.01, None, "ok"),
    ]
    assert describe(alerts(drifts)) == "x1 PSI 0.83, x2 PSI 0.41"
    assert describe(alerts(drifts), limit=1) == "x1 PSI 0.83 and 1 more"
    assert summary(drifts) == "drift: 2 alert (x1 PSI 0.83, x2 PSI 0.41), 1 warn (x3 PSI 0.12), 1 ok"
