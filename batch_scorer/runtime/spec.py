"""What a run is, once resolved: :class:`RunPlan` (built by :mod:`batch_scorer.runtime.plan`).

The run, the batch and the executors work from these; none of them sees the
configuration (an import-linter contract keeps it so).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

import sqlalchemy as sa

from batch_scorer.models.loader import LoadedModel
from batch_scorer.monitoring.profile import FeatureBins, Profile
from batch_scorer.storage.ledger import ModelStamp
from batch_scorer.storage.sinks.output import define_output
from batch_scorer.storage.sources.spec import SourceSpec
from batch_scorer.storage.sources.sql import SourceColumns
from batch_scorer.storage.views import shadow_table_name


@dataclass(frozen=True)
class Scorer:
    """A model a run scores with: the champion, or a challenger scored in shadow."""

    role: str  # "champion" | "challenger"
    label: str  # what a shadow row's `challenger` column says (an alias or "v3")
    model: LoadedModel
    stamp: ModelStamp


@dataclass(frozen=True)
class FailedChallenger:
    """A challenger the plan could not use (not resolved, not loaded, a feature column the
    source lacks, a prediction the shadow table cannot hold): recorded in
    ``shadow_comparisons`` with its error; the champion runs as usual."""

    label: str
    version: str | None
    error: str


@dataclass(frozen=True)
class Settings:
    """The effective settings of one run."""

    chunk_size: int
    max_rejected_fraction: float
    allow_empty: bool
    want_score: bool


@dataclass(frozen=True)
class MonitorPlan:
    """What a run profiles and compares (see :mod:`batch_scorer.runtime.monitor`).

    ``kinds``: every profiled column (the model's features, then the score and the
    predicted class under ``score_name`` / ``prediction_name``), ``numeric`` or
    ``categorical``. ``bins``: the reference's bins of each, or None when the model
    version has no reference yet: the run then sketches its own (``n_bins``) and
    becomes the reference. ``previous``: the profile of the job's previous
    published run (``previous_run_id``), for ``psi_previous``.
    """

    kinds: Mapping[str, str]
    bins: Mapping[str, FeatureBins] | None
    n_bins: int
    warn_psi: float
    alert_psi: float
    on_alert: str  # "warn" | "fail"
    reference_id: str | None = None
    reference: Profile | None = None
    previous_run_id: int | None = None
    previous: Profile | None = None
    score_name: str | None = None
    score_from_prediction: bool = False  # a regressor: its prediction is profiled as the score
    prediction_name: str | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """The profiled columns, features first."""
        return tuple(self.kinds)


@dataclass(frozen=True)
class RunPlan:
    """One job's run for one as_of, resolved (module doc)."""

    job: str
    as_of: date
    trigger: str
    source: SourceSpec
    columns: SourceColumns
    read_columns: tuple[str, ...]
    champion: Scorer
    challengers: tuple[Scorer, ...]
    output: sa.Table
    shadow: sa.Table | None
    classifier: bool
    prediction_kind: str
    settings: Settings
    depends_on: tuple[str, ...] = ()
    failed_challengers: tuple[FailedChallenger, ...] = ()
    monitor: MonitorPlan | None = None  # None: drift monitoring is off for the job
    # The form of the output's _daily view when jobs of one command share the table
    # (True: counts per prediction; None: this job's own, by ``classifier``).
    shared_counts_view: bool | None = None

    @property
    def scorers(self) -> tuple[Scorer, ...]:
        """The champion, then the challengers."""
        return (self.champion, *self.challengers)

    @property
    def counts_view(self) -> bool:
        """Whether the output's ``_daily`` view counts rows per prediction (classifiers) or
        summarises them as numbers (regressors)."""
        return self.classifier if self.shared_counts_view is None else self.shared_counts_view

    @property
    def output_name(self) -> str:
        t = self.output
        return t.name if t.schema is None else f"{t.schema}.{t.name}"


def output_definition(name: str, source: SourceSpec, columns: SourceColumns, kind: str,
                      shadow: bool = False) -> sa.Table:
    """The output table ``name`` of a job reading ``source``: its key and pass-through
    columns with the source's types, a prediction column of ``kind``."""
    types = columns.types
    return define_output(name, [(k, types[k]) for k in source.key], [(c, types[c]) for c in source.pass_through],
                         kind, shadow=shadow)


def shadow_definition(plan: RunPlan) -> sa.Table:
    """The ``<output>_shadow`` twin of a plan's output table."""
    return output_definition(shadow_table_name(plan.output_name), plan.source, plan.columns, plan.prediction_kind,
                             shadow=True)


