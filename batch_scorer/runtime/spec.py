"""What a run is, once resolved: :class:`RunPlan` (built by :mod:`batch_scorer.runtime.plan`).

The run, the batch and the executors work from these; none of them sees the
configuration (an import-linter contract keeps it so).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import sqlalchemy as sa

from batch_scorer.models.loader import LoadedModel
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

    @property
    def scorers(self) -> tuple[Scorer, ...]:
        """The champion, then the challengers."""
        return (self.champion, *self.challengers)

    @property
    def output_name(self) -> str:
        t = self.output
        return t.name if t.schema is None else f"{t.schema}.{t.name}"


def shadow_definition(plan: RunPlan) -> sa.Table:
    """The ``<output>_shadow`` twin of a plan's output table."""
    types = plan.columns.types
    return define_output(
        shadow_table_name(plan.output_name),
        [(k, types[k]) for k in plan.source.key],
        [(c, types[c]) for c in plan.source.pass_through],
        plan.prediction_kind,
        shadow=True,
    )


