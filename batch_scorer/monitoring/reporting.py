"""The report's data, read from the database: one :class:`~batch_scorer.monitoring.report.JobReport`
per job, for :func:`~batch_scorer.monitoring.report.render_report`.

Per job: its last :data:`~batch_scorer.monitoring.report.MAX_RUNS` runs from the
``scoring_runs_bi`` view (every status: a failed run is a red bar; the view, so a
role that may read only what BI reads can make the report), the PSI of each profiled column
against the reference over its last published runs (one per as_of: a replaced
run's drift is not shown), the score distribution of the published run of the latest
as_of against its reference, and every ``model_metrics`` figure (champion and challengers, by
model version). A few small queries per job, whatever the number of rows scored.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from sqlalchemy.engine import Connection

from batch_scorer.monitoring.drift import ALERT_PSI, WARN_PSI
from batch_scorer.monitoring.profile import SCORE, Profile
from batch_scorer.monitoring.report import (
    MAX_RUNS,
    METRIC_COLUMNS,
    PSI_COLUMNS,
    RUN_COLUMNS,
    RUN_EXTRA_COLUMNS,
    JobReport,
    share_table,
)
from batch_scorer.storage import ledger, profiles


def job_report(conn: Connection, job: str, warn_psi: float = WARN_PSI, alert_psi: float = ALERT_PSI) -> JobReport:
    """What the report shows of one job (module doc); empty frames where there is no data yet."""
    runs = ledger.recent_runs_bi(conn, job, MAX_RUNS)
    columns = [*RUN_COLUMNS, *RUN_EXTRA_COLUMNS]
    run_frame = pd.DataFrame([[r[c] for c in columns] for r in runs], columns=columns)
    published = ledger.published_run_ids_bi(conn, job, MAX_RUNS)
    drifts = profiles.drift_rows(conn, published)
    psi = pd.DataFrame([(d["as_of"], d["feature"], d["psi_reference"]) for d in drifts], columns=list(PSI_COLUMNS))
    metrics = pd.DataFrame(profiles.metric_rows(conn, job))
    metrics = metrics.loc[:, list(METRIC_COLUMNS)] if len(metrics) else pd.DataFrame(columns=list(METRIC_COLUMNS))
    return JobReport(
        job=job,
        runs=run_frame,  # the header's model version: the last run's (latest as_of), as its status
        score_distribution=_score_distribution(conn, drifts, published),
        psi=psi,
        metrics=metrics,
        warn_psi=warn_psi,
        alert_psi=alert_psi,
    )


def _score_distribution(conn: Connection, drifts: list[dict[str, Any]], published: list[int]) -> pd.DataFrame:
    """The latest published run's score bins against its reference's (empty: no score profiled).

    The latest by as_of (``published`` is newest as_of first), as ``drift_latest`` and the
    header: a later re-score or backfill of an older day does not take its place."""
    latest = published[0] if published else None
    scored = [d for d in drifts if d["run_id"] == latest and _is_score(d["feature"])]
    if not scored:
        return pd.DataFrame(columns=["bin", "reference_share", "current_share"])
    feature, reference_id = scored[0]["feature"], scored[0]["reference_profile"]
    current = _profile(conn, profiles.run_profile_id(latest), feature)
    reference = _profile(conn, reference_id, feature) if reference_id else None
    if current is None or reference is None or reference.bins.get(feature) != current.bins[feature]:
        return pd.DataFrame(columns=["bin", "reference_share", "current_share"])
    return share_table(reference, current, feature)


def _is_score(feature: str) -> bool:
    """The model's score: ``score``, or ``model_score`` when a feature took that name."""
    return feature == SCORE or (feature.endswith("_" + SCORE) and feature.startswith("model_")
                                and set(feature[: -len(SCORE)].split("_")) <= {"model", ""})


def _profile(conn: Connection, profile_id: str, feature: str) -> Profile | None:
    rows = profiles.profile_rows(conn, profile_id, feature)
    try:
        return Profile.from_rows(rows) if rows else None
    except ValueError:
        return None
