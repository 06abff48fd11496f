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
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch_scorer.config import Config, JobConfig
from batch_scorer.core.checks import check_score_contract
from batch_scorer.errors import DatabaseError
from batch_scorer.masking import first_line, mask_text
from batch_scorer.models.loader import LoadedModel, load_model_bytes, read_model
from batch_scorer.models.scoring import prediction_kind, probe_model
from batch_scorer.runtime.monitor import MonitorSettings, monitor_plan
from batch_scorer.runtime.spec import MonitorPlan, RunPlan, Scorer, Settings
from batch_scorer.storage.ledger import ModelStamp
from batch_scorer.storage.sinks.output import define_output, prepare_output_table
from batch_scorer.storage.sources.spec import SourceSpec
from batch_scorer.storage.sources.sql import check_columns, needed_columns, probe_columns, probe_row

log = logging.getLogger(__name__)

__all__ = ["ModelCache", "RunPlan", "build_plan", "champion_model", "source_spec"]


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


class ModelCache:
    """Each model loaded once per process, by the sha256 of its bytes (thread-safe).

    The bytes are read once; the sha256 checked (against a pin) is the sha256 of
    the bytes that are loaded, and a second job using the same bytes (another
    path, the registry) gets the already loaded estimator."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[object, ...], LoadedModel] = {}
        self._lock = threading.Lock()

    def load_path(self, job: JobConfig) -> LoadedModel:
        """The model file of a ``path:`` job."""
        m = job.model
        assert m.path is not None
        path = Path(m.path)
        data, fmt = read_model(job.name, path)
        return self.load_bytes(job, data, source=f"file {path}", fmt=fmt, version=m.version,
                               pinned_sha256=m.sha256, path=path)

    def load_bytes(
        self, job: JobConfig, data: bytes, *, source: str, fmt: str, version: str | None,
        pinned_sha256: str | None, path: Path | None = None,
    ) -> LoadedModel:
        """Bytes from a file or the registry; the pin is checked before anything is loaded."""
        sha = hashlib.sha256(data).hexdigest()
        key = (sha, tuple(job.features or ()), job.allow_version_mismatch, tuple(job.model.trusted_types))
        with self._lock:
            cached = self._by_key.get(key)
        if cached is None or (pinned_sha256 is not None and pinned_sha256 != sha):
            cached = load_model_bytes(
                job.name, data, source=source, fmt=fmt, pinned_sha256=pinned_sha256, version=version,
                features=job.features, allow_version_mismatch=job.allow_version_mismatch,
                trusted_types=job.model.trusted_types,
            )
            with self._lock:
                self._by_key[key] = cached
        return dataclasses.replace(cached, path=path, source=source, version=version or sha[:12])


def champion_model(cfg: Config, engine: Engine, job: JobConfig, models: ModelCache | None = None) -> LoadedModel:
    """The model a job's runs score with (its champion), loaded once per process by sha256."""
    return (models or ModelCache()).load_path(job)


def build_plan(
    cfg: Config, engine: Engine, name: str, as_of: date, trigger: str, models: ModelCache | None = None
) -> RunPlan:
    """Resolve one job for one as_of; raises a :class:`BatchScorerError` (exit 2) if it cannot run."""
    job = cfg.job(name)
    model = champion_model(cfg, engine, job, models)
    check_score_contract(job.name, job.output.score, model)
    spec = source_spec(cfg, job)
    read_columns = tuple(needed_columns(spec, model.features))
    with engine.connect() as conn:
        columns = probe_columns(conn, spec, as_of)
        check_columns(spec, model.features, columns)
        first = _first_row(conn, spec, as_of, read_columns, model.features)
    # One real row through the model before anything is recorded: a model that
    # predicts several values per row, or is not fitted, is exit 2 here.
    probe = probe_model(job.name, model, first)
    kind = prediction_kind(model, probe.predict_dtype_kind)
    types = columns.types
    keys = [(k, types[k]) for k in spec.key]
    passing = [(c, types[c]) for c in spec.pass_through]
    output = define_output(job.output.table, keys, passing, kind)
    prepare_output_table(engine, output, kind, job.name, model.is_classifier, create=False)
    champion = Scorer("champion", "champion", model, _stamp(model))
    want_score = job.output.score is not False
    return RunPlan(
        job=job.name,
        as_of=as_of,
        trigger=trigger,
        source=spec,
        columns=columns,
        read_columns=read_columns,
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
            want_score=want_score,
        ),
        depends_on=tuple(job.depends_on),
        monitor=_monitor(engine, job, as_of, champion, kind, want_score, columns.types),
    )


def _monitor(
    engine: Engine, job: JobConfig, as_of: date, champion: Scorer, kind: str, want_score: bool,
    types: Mapping[str, sa.types.TypeEngine[Any]],
) -> MonitorPlan | None:
    """The job's drift monitoring: its reference and previous profile looked up (reads only)."""
    m = job.monitor
    if not m.enabled:
        return None
    settings = MonitorSettings(bins=m.bins, warn_psi=m.warn_psi, alert_psi=m.alert_psi, on_alert=m.on_alert)
    return monitor_plan(engine, settings, job=job.name, as_of=as_of, model=champion.model, stamp=champion.stamp,
                        prediction_kind=kind, want_score=want_score, column_types=types)


def _first_row(
    conn: sa.Connection, spec: SourceSpec, as_of: date, columns: tuple[str, ...], features: tuple[str, ...]
) -> pd.DataFrame:
    """The source's first row for the model probe. A source that fails when rows are read
    is the run's failure (recorded, exit 1), not the model's: then there is no probe row."""
    try:
        return probe_row(conn, spec, as_of, columns, features)
    except (DatabaseError, sa.exc.SQLAlchemyError) as exc:
        log.debug("job %s: the probe row could not be read (%s); the run will report why", spec.job,
                  mask_text(first_line(exc)))
        return pd.DataFrame(columns=list(columns))


def _stamp(model: LoadedModel) -> ModelStamp:
    return ModelStamp(version=model.version, sha256=model.sha256, sklearn_version=model.pickled_sklearn_version)
