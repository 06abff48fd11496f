"""Drift monitoring of a run, and reference profiles of registered model versions.

A run with monitoring on profiles every chunk while it streams
(:class:`batch_scorer.core.profiling.ProfileObserver`): the model's input
features as the model was fed them, the score (a regressor's prediction) and a
classifier's predicted class, in the bins of the model version's reference. At
publish, :class:`RunMonitor` computes each column's PSI against the reference and
against the job's previous published run, and hands back the rows that the
run's publish transaction stores (``feature_profiles``, ``drift``) and the worst
status for the ledger. ``on_alert: fail`` raises instead: nothing is published.

The reference (:func:`monitor_plan`): the profile given when the model version was
registered (:func:`store_reference`), else the profile of the job's first
succeeded run of the same model bytes. A run with no reference yet sketches its
rows (:class:`~batch_scorer.monitoring.profile.ReferenceSketch`) and its own
profile becomes the reference: its drift rows say PSI 0, ``ok``, against itself
(``reference_profile`` is its own ``run:<id>``), so the first run shows up in
``drift_latest`` and the report like any other.

docs/monitoring.md describes the bins, the formula and what this costs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch_scorer.core.checks import Checked, score_checked
from batch_scorer.core.profiling import Partial, ProfileObserver, merge_partials
from batch_scorer.errors import RunFailed
from batch_scorer.models.features import coerce_features
from batch_scorer.models.loader import LoadedModel
from batch_scorer.models.scoring import prediction_kind as kind_of_prediction
from batch_scorer.monitoring import drift as psi_math
from batch_scorer.monitoring.profile import (
    CATEGORICAL,
    NUMERIC,
    PREDICTION,
    SCORE,
    FeatureBins,
    Profile,
    ReferenceSketch,
    bins_from_reference,
    feature_kind,
)
from batch_scorer.runtime.spec import MonitorPlan
from batch_scorer.storage import profiles
from batch_scorer.storage.db import TableRows
from batch_scorer.storage.ddl import create_tool_tables
from batch_scorer.storage.ledger import ModelStamp
from batch_scorer.storage.sources.spec import SourceSpec
from batch_scorer.storage.sources.sql import check_columns, probe_columns, read_chunks

log = logging.getLogger(__name__)

_SEVERITY = {psi_math.OK: 0, psi_math.WARN: 1, psi_math.ALERT: 2}
# Float is a Numeric; Boolean is none of these (booleans are categorical).
_NUMERIC_TYPES = (sa.Integer, sa.Numeric, sa.Date, sa.DateTime, sa.Interval)


@dataclass(frozen=True)
class MonitorSettings:
    """A job's ``monitor:`` settings, as the plan builder hands them over."""

    bins: int = 10
    warn_psi: float = psi_math.WARN_PSI
    alert_psi: float = psi_math.ALERT_PSI
    on_alert: str = "warn"


@dataclass(frozen=True)
class Outputs:
    """Which model outputs a run profiles, and under which names (see :func:`profiled_outputs`)."""

    score_name: str | None
    score_from_prediction: bool
    prediction_name: str | None

    def kinds(self) -> dict[str, str]:
        out = {self.score_name: NUMERIC} if self.score_name else {}
        if self.prediction_name:
            out[self.prediction_name] = CATEGORICAL
        return out


def profiled_outputs(model: LoadedModel, prediction_kind: str, want_score: bool) -> Outputs:
    """The score (a classifier's probability when the run writes one; a regressor's, or any
    numeric model's, prediction) and a classifier's or clusterer's predicted class.

    They are named ``score`` and ``prediction``, unless a model feature has that name:
    then ``model_score`` (``model_model_score``...), so no feature is shadowed.
    """
    def free(name: str) -> str:
        while name in model.features:
            name = f"model_{name}"
        return name

    if model.is_classifier:
        score = free(SCORE) if want_score and model.has_proba else None
        return Outputs(score, False, free(PREDICTION))
    if model.kind == "clusterer" or prediction_kind not in ("float", "integer"):
        return Outputs(None, False, free(PREDICTION))
    return Outputs(free(SCORE), True, None)


def column_kinds(model: LoadedModel, column_types: Mapping[str, sa.types.TypeEngine[Any]]) -> dict[str, str]:
    """Each feature's kind: as the model was fitted (``text`` is categorical), else by the
    source column's SQL type (numbers, dates and timestamps numeric; the rest categorical)."""
    out: dict[str, str] = {}
    for feature in model.features:
        fitted = model.feature_kinds.get(feature)
        if fitted is not None:
            out[feature] = NUMERIC if fitted == NUMERIC else CATEGORICAL
        else:
            out[feature] = NUMERIC if isinstance(column_types.get(feature), _NUMERIC_TYPES) else CATEGORICAL
    return out


@dataclass(frozen=True)
class MonitorRequest:
    """What planning knows of one run that monitoring needs (see :func:`monitor_plans`)."""

    settings: MonitorSettings
    job: str
    as_of: date
    model: LoadedModel
    stamp: ModelStamp
    prediction_kind: str
    want_score: bool
    column_types: Mapping[str, sa.types.TypeEngine[Any]]


def monitor_plan(
    engine: Engine, settings: MonitorSettings, *, job: str, as_of: date, model: LoadedModel, stamp: ModelStamp,
    prediction_kind: str, want_score: bool, column_types: Mapping[str, sa.types.TypeEngine[Any]],
) -> MonitorPlan:
    """What a run of ``job`` profiles and compares against (module doc). Reads, never writes."""
    request = MonitorRequest(settings, job, as_of, model, stamp, prediction_kind, want_score, column_types)
    return monitor_plans(engine, [request])[0]


def monitor_plans(engine: Engine, requests: Sequence[MonitorRequest]) -> list[MonitorPlan]:
    """:func:`monitor_plan` for many runs, their references and previous profiles read
    together (a few queries for a whole batch, not four per job). Reads, never writes."""
    found: list[tuple[profiles.StoredProfile | None, profiles.StoredProfile | None]] = [(None, None)] * len(requests)
    if requests and profiles.has_monitoring_tables(engine):
        wants = [profiles.ProfileWant(r.job, r.model.sha256, r.stamp.name, r.stamp.registry_version, r.as_of)
                 for r in requests]
        with engine.connect() as conn:
            found = profiles.reference_and_previous(conn, wants)
    return [_plan_of(r, reference, previous) for r, (reference, previous) in zip(requests, found, strict=True)]


def _plan_of(request: MonitorRequest, reference: profiles.StoredProfile | None,
             previous: profiles.StoredProfile | None) -> MonitorPlan:
    job, settings = request.job, request.settings
    outputs = profiled_outputs(request.model, request.prediction_kind, request.want_score)
    kinds = {**column_kinds(request.model, request.column_types), **outputs.kinds()}
    ref_profile = _rebuilt(job, reference)
    bins: dict[str, FeatureBins] | None = None
    if ref_profile is not None:
        bins = {c: ref_profile.bins[c] for c in kinds if c in ref_profile.bins}
        skipped = [c for c in kinds if c not in bins]
        if skipped:
            log.info("job %s: the reference %s has no bins for %s; those are not profiled",
                     job, reference.profile_id if reference else "", ", ".join(skipped))
        if bins:
            ref_profile = Profile.from_counts(bins, {c: ref_profile.counts(c) for c in bins})
        else:
            bins, ref_profile = None, None
    prev_profile = _rebuilt(job, previous)
    return MonitorPlan(
        kinds=kinds, bins=bins, n_bins=settings.bins, warn_psi=settings.warn_psi, alert_psi=settings.alert_psi,
        on_alert=settings.on_alert,
        reference_id=reference.profile_id if ref_profile is not None and reference else None,
        reference=ref_profile,
        previous_run_id=previous.run_id if prev_profile is not None and previous else None, previous=prev_profile,
        score_name=outputs.score_name, score_from_prediction=outputs.score_from_prediction,
        prediction_name=outputs.prediction_name,
    )


def _rebuilt(job: str, stored: profiles.StoredProfile | None) -> Profile | None:
    if stored is None:
        return None
    try:
        return Profile.from_tuples(stored.rows)
    except ValueError as exc:  # a profile someone edited by hand: monitor as if it were not there
        log.warning("job %s: stored profile %s is unusable (%s); ignored", job, stored.profile_id, exc)
        return None


def observer_for(plan: MonitorPlan) -> ProfileObserver:
    """The chunk observer that profiles a run of this plan."""
    return ProfileObserver(
        kinds=dict(plan.kinds), bins=dict(plan.bins) if plan.bins is not None else None, n_bins=plan.n_bins,
        score_name=plan.score_name, score_from_prediction=plan.score_from_prediction,
        prediction_name=plan.prediction_name,
    )


@dataclass(frozen=True)
class MonitorOutcome:
    """What a run's monitoring publishes: the rows of both tables, the drifts, the worst status."""

    profile_rows: TableRows
    drift_rows: list[dict[str, Any]]
    drifts: list[psi_math.FeatureDrift]
    status: str

    def log_line(self) -> str:
        """``drift: 1 alert (x1 PSI 0.83), 3 ok``: the features and their PSI."""
        return psi_math.summary(self.drifts)


class RunMonitor:
    """One run's profile while it streams (merged chunk partials) and its drift at publish."""

    def __init__(self, plan: MonitorPlan) -> None:
        self.plan = plan
        self.observer = observer_for(plan)
        self.state: Partial | None = None
        self.alerted = False  # set when finish refused the run (on_alert: fail)

    def absorb(self, observed: Mapping[str, Any]) -> None:
        """Merge one chunk's partial (on the driver, whoever computed it)."""
        self.state = merge_partials(self.state, observed.get(self.observer.name))

    def finish(self, run_id: int, job: str, as_of: date, stamp: ModelStamp) -> MonitorOutcome | None:
        """The drift of the run's profile; None when no row was scored. Raises :class:`RunFailed`
        when a column alerts and ``on_alert`` is ``fail``."""
        if self.state is None:
            return None
        plan = self.plan
        if isinstance(self.state, ReferenceSketch):  # no reference yet: this run is it
            current = reference = self.state.profile()
            reference_id = profiles.run_profile_id(run_id)
        else:
            current, reference, reference_id = self.state, plan.reference, plan.reference_id
        assert reference is not None and reference_id is not None
        drifts = psi_math.compare(reference, current, plan.previous, plan.warn_psi, plan.alert_psi)
        alerts = psi_math.alerts(drifts)
        if alerts and plan.on_alert == "fail":
            self.alerted = True
            raise RunFailed(
                f"job {job!r}: drift alert for as_of {as_of}: {psi_math.describe(alerts)} (PSI against the "
                f"reference {reference_id}, at or above alert_psi {plan.alert_psi:g}); monitor.on_alert is "
                "fail, so nothing was published. Check the upstream source for this as_of (a broken load, a "
                "column gone NULL); if the population really changed, run with monitor.on_alert: warn."
            )
        worst = max((d.status for d in drifts), key=_SEVERITY.__getitem__, default=psi_math.OK)
        return MonitorOutcome(
            profile_rows=_profile_rows(current, run_id, job, stamp),
            drift_rows=_drift_rows(drifts, run_id, job, as_of, stamp, reference_id, plan.previous_run_id),
            drifts=drifts,
            status=worst,
        )


def _profile_rows(profile: Profile, run_id: int, job: str, stamp: ModelStamp) -> TableRows:
    owner = (profiles.run_profile_id(run_id), run_id, job, stamp.name, stamp.version or "")
    return TableRows(("profile_id", "run_id", "job", "model_name", "model_version", *profiles.PROFILE_COLUMNS),
                     [owner + row for row in profile.to_tuples()])


def _drift_rows(
    drifts: Sequence[psi_math.FeatureDrift], run_id: int, job: str, as_of: date, stamp: ModelStamp,
    reference_id: str, previous_run_id: int | None,
) -> list[dict[str, Any]]:
    return [
        {"run_id": run_id, "job": job, "as_of": as_of, "model_version": stamp.version or "", "feature": d.feature,
         "psi_reference": d.psi_reference, "psi_previous": d.psi_previous, "status": d.status,
         "reference_profile": reference_id,
         "previous_run_id": previous_run_id if d.psi_previous is not None else None}
        for d in drifts
    ]


# -- references given at registration -------------------------------------------------

ChunkSource = pd.DataFrame | Iterable[pd.DataFrame] | Callable[[], Iterable[pd.DataFrame]]


@dataclass(frozen=True)
class StoredReference:
    """What :func:`store_reference` stored: the profile id, the rows profiled, the columns."""

    profile_id: str
    rows: int
    columns: tuple[str, ...]
    exact: bool  # False: deciles from a sample (a one-pass iterable of chunks), see ReferenceSketch


def store_reference(
    engine: Engine, model_name: str, version: int | str, model: LoadedModel, frame_or_chunks: ChunkSource,
    bins: int = 10,
) -> StoredReference:
    """Profile reference data (e.g. the training set) of a registered model version and store
    it as ``reference:<name>:<version>``, replacing an earlier one; every run of that version
    is then compared with it. The profiling is :func:`profile_reference`'s."""
    create_tool_tables(engine)
    profile, exact = profile_reference(model, frame_or_chunks, bins)
    pid = profiles.reference_profile_id(model_name, version)
    profiles.replace_reference(engine, pid, model_name, str(version), reference_rows(profile))
    rows = max((profile.rows(f) for f in profile.bins), default=0)
    log.info("model %s version %s: reference profile %s stored (%d rows, %d columns)", model_name, version,
             pid, rows, len(profile.bins))
    return StoredReference(pid, rows, tuple(profile.bins), exact)


def profile_reference(model: LoadedModel, frame_or_chunks: ChunkSource, bins: int = 10) -> tuple[Profile, bool]:
    """The profile of reference data as a run of ``model`` profiles its rows, and whether its
    deciles are exact. For a caller that stores it in its own transaction (a registration):
    ``reference_rows(profile)`` gives the rows.

    ``frame_or_chunks``: a DataFrame (exact deciles), a callable returning a fresh iterable
    of chunks each time it is called (read twice: exact deciles, bounded memory; see
    :func:`reference_chunks`), or a one-pass iterable of chunks (deciles from a bounded
    sample). The rows need the model's feature columns; they are coerced and scored as a
    run would, so the score (a regressor's prediction) and the predicted class get a
    reference too. Rows the model cannot score are left out, as a run leaves out rejected
    rows.
    """
    if isinstance(frame_or_chunks, pd.DataFrame):
        return _exact_profile(model, frame_or_chunks, bins), True
    if callable(frame_or_chunks):
        sketch = _fold(model, frame_or_chunks(), None, bins)
        profile = _fold(model, frame_or_chunks(), sketch.bins() if sketch else {}, bins)
        return profile if isinstance(profile, Profile) else Profile({}), True
    sketch = _fold(model, frame_or_chunks, None, bins)
    return (sketch.profile() if sketch else Profile({})), False


def reference_rows(profile: Profile) -> list[dict[str, Any]]:
    """A reference profile's ``feature_profiles`` rows without their owner columns
    (``feature, kind, bin, lower, upper, category, rows``): add ``profile_id``,
    ``model_name`` and ``model_version`` to store them."""
    return list(profile.to_rows(with_kind=True))


def _reference_observer(model: LoadedModel, checked: Checked, features: pd.DataFrame,
                        bins: Mapping[str, FeatureBins] | None, n_bins: int) -> ProfileObserver:
    """The observer of reference chunks; kinds from the model, else the first chunk's dtypes."""
    kind = kind_of_prediction(model, np.asarray(checked.prediction).dtype.kind)
    outputs = profiled_outputs(model, kind, want_score=True)
    declared = {f: NUMERIC if k == NUMERIC else CATEGORICAL for f, k in model.feature_kinds.items()}
    kinds = {f: feature_kind(features[f], declared.get(f)) for f in model.features}
    return ProfileObserver(kinds={**kinds, **outputs.kinds()}, bins=dict(bins) if bins is not None else None,
                           n_bins=n_bins, score_name=outputs.score_name,
                           score_from_prediction=outputs.score_from_prediction,
                           prediction_name=outputs.prediction_name)


def _checked(model: LoadedModel, chunk: pd.DataFrame) -> tuple[Checked, pd.DataFrame]:
    """A reference chunk scored as a run scores it, and its coerced features."""
    checked = score_checked(model, chunk, (), job_name="reference", max_rejected_fraction=1.0)
    features, _ = coerce_features(checked.rows.loc[:, list(model.features)], model.feature_kinds)
    return checked, features


def _fold(model: LoadedModel, chunks: Iterable[pd.DataFrame], bins: Mapping[str, FeatureBins] | None,
          n_bins: int) -> Any:
    """Every chunk's partial merged: a ReferenceSketch (``bins`` None) or a Profile."""
    state: Partial | None = None
    observer: ProfileObserver | None = None
    for chunk in chunks:
        checked, features = _checked(model, chunk)
        if len(checked.rows):
            observer = observer or _reference_observer(model, checked, features, bins, n_bins)
            state = merge_partials(state, observer.observe(checked, features))
    return state


def _exact_profile(model: LoadedModel, frame: pd.DataFrame, n_bins: int) -> Profile:
    checked, features = _checked(model, frame)
    if not len(checked.rows):
        return Profile({})
    observer = _reference_observer(model, checked, features, None, n_bins)
    columns = observer.frame(checked, features)
    profile = Profile(bins_from_reference(columns, observer.kinds, n_bins))
    profile.update(columns)
    return profile


def reference_chunks(
    engine: Engine, source: str | Path, model: LoadedModel, chunk_size: int = 50_000,
) -> Callable[[], Iterator[pd.DataFrame]]:
    """Reference rows from a table (``table`` or ``schema.table``) or a ``.sql`` file, as
    :func:`store_reference` takes them (each call reads them again). Every row is read;
    a query's ``:as_of``, if it has one, is today. The columns are checked first."""
    text = str(source)
    is_query = text.lower().endswith(".sql")
    spec = SourceSpec(job=f"reference {text}", key=(), table=None if is_query else text,
                      query=Path(text) if is_query else None, section=None,
                      subject=f"reference {'query' if is_query else 'table'} {text!r} of model {model.source}")
    day = date.today()
    with engine.connect() as conn:
        check_columns(spec, model.features, probe_columns(conn, spec, day))

    def chunks() -> Iterator[pd.DataFrame]:
        with engine.connect() as conn, contextlib.closing(
            read_chunks(conn, spec, day, list(model.features), chunk_size, model.features)
        ) as stream:
            yield from stream

    return chunks
