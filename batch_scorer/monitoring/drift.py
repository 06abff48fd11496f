"""Drift: the population stability index (PSI) of each profiled feature and its status.

``PSI = sum((cur - ref) * ln(cur / ref))`` over a feature's bins, where ``cur`` and
``ref`` are shares (counts / total) and an empty bin's share is taken as ``floor``
(0.0001) so the logarithm stays finite. Status: ``ok`` below ``warn`` (0.1),
``warn`` from ``warn``, ``alert`` from ``alert`` (0.25).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from batch_scorer.monitoring.profile import Profile

WARN_PSI = 0.1
ALERT_PSI = 0.25
FLOOR = 0.0001
OK, WARN, ALERT = "ok", "warn", "alert"


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's PSI against the reference (which sets ``status``) and the previous run."""

    feature: str
    psi_reference: float
    psi_previous: float | None
    status: str


def psi(ref_counts: Sequence[int] | np.ndarray, cur_counts: Sequence[int] | np.ndarray, floor: float = FLOOR) -> float:
    """PSI of two count vectors over the same bins; 0.0 when either side has no rows (no evidence).

    A bin with no rows on a side counts as ``floor`` of that side. Summed in plain Python:
    a profile has ~10 bins per feature, where NumPy's per-call cost was most of a run's
    drift time (a fleet's job compares ~50 features)."""
    ref_array = np.asarray(ref_counts, dtype="float64")
    cur_array = np.asarray(cur_counts, dtype="float64")
    if ref_array.shape != cur_array.shape or ref_array.ndim != 1:
        raise ValueError(f"PSI needs two count vectors of the same length, not {ref_array.shape} and {cur_array.shape}")
    ref, cur = ref_array.tolist(), cur_array.tolist()
    if min(ref, default=0.0) < 0 or min(cur, default=0.0) < 0:
        raise ValueError("PSI counts must not be negative")
    ref_total, cur_total = math.fsum(ref), math.fsum(cur)
    if ref_total == 0 or cur_total == 0:
        return 0.0
    terms = []
    for r, c in zip(ref, cur, strict=True):
        ref_share = floor if r == 0 else r / ref_total
        cur_share = floor if c == 0 else c / cur_total
        terms.append((cur_share - ref_share) * math.log(cur_share / ref_share))
    return math.fsum(terms)


def status(value: float, warn: float = WARN_PSI, alert: float = ALERT_PSI) -> str:
    """``alert`` from ``alert``, ``warn`` from ``warn``, else ``ok``."""
    if warn > alert:
        raise ValueError(f"warn_psi ({warn}) must not be above alert_psi ({alert})")
    if value >= alert:
        return ALERT
    if value >= warn:
        return WARN
    return OK


def compare(
    reference: Profile,
    current: Profile,
    previous: Profile | None = None,
    warn: float = WARN_PSI,
    alert: float = ALERT_PSI,
) -> list[FeatureDrift]:
    """PSI of each feature of ``current`` against ``reference`` and, if given, ``previous``.

    ``current`` must use the reference's bins (it is built from them). The previous
    run's PSI is None for a feature the previous profile lacks or binned otherwise
    (a previous run of another reference).
    """
    out: list[FeatureDrift] = []
    for feature, fbins in current.bins.items():
        ref_bins = reference.bins.get(feature)
        if ref_bins != fbins:
            raise ValueError(
                f"feature {feature!r}: the current profile's bins are not the reference's; "
                "build the run's Profile from the reference's bins"
            )
        counts = current.counts(feature)
        against_ref = psi(reference.counts(feature), counts)
        against_prev = None
        if previous is not None and previous.bins.get(feature) == fbins:
            against_prev = psi(previous.counts(feature), counts)
        out.append(FeatureDrift(feature, against_ref, against_prev, status(against_ref, warn, alert)))
    return out


def alerts(drifts: Iterable[FeatureDrift]) -> list[FeatureDrift]:
    """The drifts whose status is ``alert``, highest PSI first."""
    return sorted((d for d in drifts if d.status == ALERT), key=lambda d: -d.psi_reference)


def psi_text(psi: float) -> str:
    """A PSI for people: two decimals from 0.1 up, two significant digits below (so a warn
    at a small threshold never reads 0.00)."""
    return f"{psi:.2f}" if abs(psi) >= 0.1 or psi == 0 else f"{psi:.2g}"


def describe(drifts: Iterable[FeatureDrift], limit: int = 10) -> str:
    """``"x1 PSI 0.83, x2 PSI 0.41"``: the given features, highest PSI first (for an error)."""
    ordered = sorted(drifts, key=lambda d: -d.psi_reference)
    text = ", ".join(f"{d.feature} PSI {psi_text(d.psi_reference)}" for d in ordered[:limit])
    if len(ordered) > limit:
        text += f" and {len(ordered) - limit} more"
    return text


def summary(drifts: Sequence[FeatureDrift], limit: int = 10) -> str:
    """One log line: ``"drift: 1 alert (x1 PSI 0.83), 1 warn (x2 PSI 0.12), 3 ok"``."""
    parts = []
    for level in (ALERT, WARN):
        chosen = [d for d in drifts if d.status == level]
        if chosen:
            parts.append(f"{len(chosen)} {level} ({describe(chosen, limit)})")
    parts.append(f"{sum(d.status == OK for d in drifts)} ok")
    return "drift: " + ", ".join(parts)
