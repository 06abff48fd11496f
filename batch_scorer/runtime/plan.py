"""The plan of a run: everything a run needs, resolved once, before anything is written.

:func:`build_plan` reads the configuration (the only place in the run path that
does), loads the model (each file once per process, by sha256:
:class:`ModelCache`), checks the model's contract and the source's columns,
and defines the output tables. The stages below (readers, writers, models,
checks, executors) get the specs built here and never see the configuration.
Building a plan writes nothing, so a bad job fails with exit 2 and no trace.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch_scorer.config import Config, JobConfig
from batch_scorer.core.checks import check_score_contract
from batch_scorer.models.loader import LoadedModel, load_model
from batch_scorer.models.scoring import prediction_kind
from batch_scorer.storage.ledger import ModelStamp
from batch_scorer.storage.sinks.output import define_output, prepare_output_table
from batch_scorer.storage.sources.spec import SourceSpec
from batch_scorer.storage.sources.sql import SourceColumns, check_columns, needed_columns, probe_columns
from batch_scorer.storage.views import shadow_table_name

log = logging.getLogger(__name__)


def source_spec(cfg: Config, job: JobConfig) -> SourceSpec:
    """The reader's view of a job's source."""
    src = job.source
    return SourceSpec(
        job=job.name,
        key=tuple(src.key),
        table=src.table,
        query=src.query,
        as_of_column=src.as_of_column,
        where=tuple(src.where.items()),
        params=tuple(src.params.items()),
        pass_through=tuple(job.output.pass_through),
        timezone=cfg.timezone,
    )


@dataclass(frozen=True)
class Scorer:
    """A model a run scores with: the champion, or a challenger scored in shadow."""

    role: str  # "champion" | "challenger"
    label: str  # what a shadow row's `challenger` column says (an alias or "v3")
    model: LoadedModel
    stamp: ModelStamp


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

    @property
    def scorers(self) -> tuple[Scorer, ...]:
        """The champion, then the challengers."""
        return (self.champion, *self.challengers)

    @property
    def output_name(self) -> str:
        t = self.output
        return t.name if t.schema is None else f"{t.schema}.{t.name}"


class ModelCache:
    """Each model file loaded once per process, by the sha256 of its bytes (thread-safe)."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[object, ...], LoadedModel] = {}
        self._lock = threading.Lock()

    def load_path(self, job: JobConfig) -> LoadedModel:
        m = job.model
        path = Path(m.path)
        sha = _sha256_or_none(path)
        key = (sha, tuple(job.features or ()), job.allow_version_mismatch, m.sha256)
        with self._lock:
            cached = self._by_key.get(key) if sha is not None else None
        if cached is not None:
            return dataclasses.replace(cached, path=path, version=m.version or cached.sha256[:12])
        loaded = load_model(job.name, path, pinned_sha256=m.sha256, version=m.version, features=job.features,
                            allow_version_mismatch=job.allow_version_mismatch)
        with self._lock:
            self._by_key[(loaded.sha256, *key[1:])] = loaded
        return loaded


def _sha256_or_none(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None  # the loader reports it properly


def build_plan(
    cfg: Config, engine: Engine, name: str, as_of: date, trigger: str, models: ModelCache | None = None
) -> RunPlan:
    """Resolve one job for one as_of; raises a :class:`BatchScorerError` (exit 2) if it cannot run."""
    job = cfg.job(name)
    model = (models or ModelCache()).load_path(job)
    check_score_contract(job.name, job.output.score, model)
    spec = source_spec(cfg, job)
    with engine.connect() as conn:
        columns = probe_columns(conn, spec, as_of)
    check_columns(spec, model.features, columns)
    kind = prediction_kind(model)
    types = columns.types
    keys = [(k, types[k]) for k in spec.key]
    passing = [(c, types[c]) for c in spec.pass_through]
    output = define_output(job.output.table, keys, passing, kind)
    prepare_output_table(engine, output, kind, job.name, model.is_classifier, create=False)
    champion = Scorer("champion", "champion", model, _stamp(model))
    return RunPlan(
        job=job.name,
        as_of=as_of,
        trigger=trigger,
        source=spec,
        columns=columns,
        read_columns=tuple(needed_columns(spec, model.features)),
        champion=champion,
        challengers=(),
        output=output,
        shadow=None,
        classifier=model.is_classifier,
        prediction_kind=kind,
        settings=Settings(
            chunk_size=cfg.chunk_size(job),
            max_rejected_fraction=cfg.max_rejected_fraction(job),
            allow_empty=job.allow_empty,
            want_score=job.output.score is not False,
        ),
        depends_on=tuple(job.depends_on),
    )


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


def _stamp(model: LoadedModel) -> ModelStamp:
    return ModelStamp(version=model.version, sha256=model.sha256, sklearn_version=model.pickled_sklearn_version)
