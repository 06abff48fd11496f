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
from datetime import date
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch_scorer.config import Config, JobConfig
from batch_scorer.core.checks import check_score_contract
from batch_scorer.errors import DatabaseError
from batch_scorer.masking import first_line, mask_text
from batch_scorer.models.contract import fully_described
from batch_scorer.models.loader import LoadedModel, load_model_bytes, read_model
from batch_scorer.models.scoring import Probe, prediction_kind, probe_model
from batch_scorer.runtime.spec import RunPlan, Scorer, Settings
from batch_scorer.storage.ledger import ModelStamp
from batch_scorer.storage.sinks.output import define_output, prepare_output_table
from batch_scorer.storage.sources.spec import SourceSpec
from batch_scorer.storage.sources.sql import SourceColumns, check_columns, needed_columns, probe_columns, probe_row

log = logging.getLogger(__name__)

__all__ = ["ModelCache", "RunPlan", "build_plan", "source_spec"]


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


class SourceProbes:
    """What planning learns by asking a source, once per invocation and source rows: its
    columns and types, and its first row (the model probe). Ten jobs on one source ask once."""

    def __init__(self) -> None:
        self._seen: dict[tuple[object, ...], tuple[SourceColumns, pd.DataFrame]] = {}
        self._lock = threading.Lock()

    def probe(self, engine: Engine, spec: SourceSpec, as_of: date) -> tuple[SourceColumns, pd.DataFrame]:
        key = (spec.identity(), as_of)
        with self._lock:
            if key in self._seen:
                return self._seen[key]
        with engine.connect() as conn:
            columns = probe_columns(conn, spec, as_of)
            # Every column, converted as a model feature would be (the row only feeds the probe).
            bare = dataclasses.replace(spec, pass_through=())
            first = _first_row(conn, bare, as_of, tuple(columns.names), tuple(columns.names))
        with self._lock:
            self._seen[key] = (columns, first)
        return columns, first


def build_plan(
    cfg: Config, engine: Engine, name: str, as_of: date, trigger: str, models: ModelCache | None = None,
    probes: SourceProbes | None = None, always_probe: bool = False,
) -> RunPlan:
    """Resolve one job for one as_of; raises a :class:`BatchScorerError` (exit 2) if it cannot run.

    ``always_probe``: score a probe row whatever the model is made of (``validate``)."""
    job = cfg.job(name)
    model = (models or ModelCache()).load_path(job)
    check_score_contract(job.name, job.output.score, model)
    spec = source_spec(cfg, job)
    read_columns = tuple(needed_columns(spec, model.features))
    columns, first = (probes or SourceProbes()).probe(engine, spec, as_of)
    check_columns(spec, model.features, columns)
    # One real row through the model before anything is recorded: a model that
    # predicts several values per row, or is not fitted, is exit 2 here. A model
    # of scikit-learn's own classes was checked by its attributes at load (a probe
    # costs a Pipeline's transforms: 25 ms a job in a fleet of small jobs).
    probe = Probe(None, None) if fully_described(model.estimator) and not always_probe else probe_model(
        job.name, model, first)
    kind = prediction_kind(model, probe.predict_dtype_kind)
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
            want_score=job.output.score is not False,
        ),
        depends_on=tuple(job.depends_on),
    )


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
