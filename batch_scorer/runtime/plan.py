"""The plan of a run: everything a run needs, resolved once, before anything is written.

:func:`build_plan` reads the configuration (the only place in the run path that
does), loads the model (each file once per process, by sha256:
:class:`ModelCache`), checks the model's contract and the source's columns,
and defines the output tables. A registry model (``model.registry``) is resolved
here, once: its alias to a version, and each challenger (:func:`resolve_models`).
The stages below (readers, writers, models, checks, executors) get the specs
built here and never see the configuration. Building a plan writes nothing, so a bad job fails with exit 2 and no trace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import threading
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch_scorer.config import Config, JobConfig
from batch_scorer.core.checks import check_score_contract
from batch_scorer.errors import BatchScorerError, DatabaseError, UsageError
from batch_scorer.masking import first_line, mask_text
from batch_scorer.models import registry
from batch_scorer.models.contract import fully_described
from batch_scorer.models.loader import LoadedModel, load_model_bytes, read_model
from batch_scorer.models.registry import version_label
from batch_scorer.models.scoring import Probe, prediction_kind, probe_model
from batch_scorer.names import split_table_name
from batch_scorer.runtime.monitor import MonitorRequest, MonitorSettings, monitor_plans
from batch_scorer.runtime.spec import (
    FailedChallenger,
    RunPlan,
    Scorer,
    Settings,
    output_definition,
    shadow_definition,
)
from batch_scorer.storage.catalog import catalog
from batch_scorer.storage.ledger import ModelStamp
from batch_scorer.storage.sinks.output import holds, prepare_output_table, widest_kind
from batch_scorer.storage.sources.spec import SourceSpec
from batch_scorer.storage.sources.sql import (
    SourceColumns,
    check_columns,
    needed_columns,
    probe_columns,
    probe_row,
)
from batch_scorer.storage.views import shadow_table_name

log = logging.getLogger(__name__)

__all__ = ["ModelCache", "RunPlan", "build_plan", "champion_model", "resolve_models", "source_spec", "with_monitoring"]


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
    path, the registry) gets the already loaded estimator.

    It also holds what an invocation resolves once: which version each registry
    alias names (a backfill resolves ``champion`` at its start and keeps that
    version for its whole range, whatever is promoted meanwhile), and
    ``version``, a registry version pinned for the invocation's champions
    (``backfill --version N``; a promote's check of its candidate).
    """

    def __init__(self, version: int | None = None) -> None:
        self.version = version
        self._by_key: dict[tuple[object, ...], LoadedModel] = {}
        self._entries: dict[tuple[str, str | int], registry.ModelVersion] = {}
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
        key = self._key(job, sha)
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

    def load_registry(self, conn: sa.Connection, job: JobConfig, ref: str | int) -> tuple[LoadedModel, ModelStamp]:
        """The registry version ``ref`` (an alias or a version number) of the job's model:
        resolved once per invocation, its stored bytes sha256-checked before they are loaded."""
        name = job.model.registry
        assert name is not None
        with self._lock:
            entry = self._entries.get((name, ref))
        if entry is None:
            entry = registry.resolve(conn, name, **({"version": ref} if isinstance(ref, int) else {"alias": ref}),
                                     job=job.name)
            with self._lock:
                entry = self._entries.setdefault((name, ref), entry)
        source = f"registry {name} {entry.label}"
        with self._lock:
            cached = self._by_key.get(self._key(job, entry.sha256))
        if cached is None:
            # Loaded (and so sha256-checked) at most once per invocation and bytes.
            cached = registry.load_version(conn, entry, job=job.name, features=job.features,
                                           allow_version_mismatch=job.allow_version_mismatch,
                                           trusted_types=job.model.trusted_types)
            with self._lock:
                self._by_key[self._key(job, entry.sha256)] = cached
        model = dataclasses.replace(cached, path=None, source=source, version=entry.label)
        return model, dataclasses.replace(_stamp(model), name=name, registry_version=entry.version)

    @staticmethod
    def _key(job: JobConfig, sha: str) -> tuple[object, ...]:
        return (sha, tuple(job.features or ()), job.allow_version_mismatch, tuple(job.model.trusted_types))


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
            names = tuple(columns.names)
            filters = [c for c, _ in spec.where] + ([spec.as_of_column] if spec.as_of_column else [])
            # A filter column the source lacks: no row to read; check_columns names it (exit 2).
            first = (_first_row(conn, bare, as_of, names, names) if all(c in names for c in filters)
                     else pd.DataFrame(columns=list(names)))
        with self._lock:
            self._seen[key] = (columns, first)
        return columns, first


def champion_model(cfg: Config, engine: Engine, job: JobConfig, models: ModelCache | None = None) -> LoadedModel:
    """The model a job's runs score with (its champion: its file, or the registry version
    its alias or version names), loaded once per invocation by sha256."""
    return resolve_champion(engine, job, models or ModelCache()).model


def build_plan(
    cfg: Config, engine: Engine, name: str, as_of: date, trigger: str, models: ModelCache | None = None,
    probes: SourceProbes | None = None, always_probe: bool = False, monitoring: bool = True,
) -> RunPlan:
    """Resolve one job for one as_of; raises a :class:`BatchScorerError` (exit 2) if it cannot run.

    ``always_probe``: score a probe row whatever the model is made of (``validate``).
    ``monitoring=False``: no drift reference is looked up and the plan monitors nothing
    (a plan that only checks a model, e.g. ``promote``: the ledger is not read)."""
    job = cfg.job(name)
    champion, challengers = resolve_models(engine, job, models or ModelCache())
    model = champion.model
    check_score_contract(job.name, job.output.score, model)
    spec = source_spec(cfg, job)
    columns, first = (probes or SourceProbes()).probe(engine, spec, as_of)
    check_columns(spec, model.features, columns)
    challengers = [_with_columns(c, columns) for c in challengers]
    # The read serves the champion and every usable challenger.
    features = tuple(dict.fromkeys(f for s in (champion, *_usable(challengers)) for f in s.model.features))
    read_columns = tuple(needed_columns(spec, features))
    # One real row through the model before anything is recorded: a model that
    # predicts several values per row, or is not fitted, is exit 2 here. A model
    # of scikit-learn's own classes was checked by its attributes at load (a probe
    # costs a Pipeline's transforms: 25 ms a job in a fleet of small jobs).
    probe = Probe(None, None) if fully_described(model.estimator, model.kind) and not always_probe else probe_model(
        job.name, model, first)
    kind = prediction_kind(model, probe.predict_dtype_kind)
    output = output_definition(job.output.table, spec, columns, kind)
    prepare_output_table(engine, output, kind, job.name, model.is_classifier, create=False)
    challengers = [_probed(job.name, job.output.score, c, first, kind, model.is_classifier) for c in challengers]
    want_score = job.output.score is not False
    plan = RunPlan(
        job=job.name,
        as_of=as_of,
        trigger=trigger,
        source=spec,
        columns=columns,
        read_columns=read_columns,
        champion=champion,
        challengers=tuple(_usable(challengers)),
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
        failed_challengers=tuple(c for c in challengers if isinstance(c, FailedChallenger)),
    )
    plan = dataclasses.replace(plan, shadow=_shadow_table(engine, plan))
    return with_monitoring(cfg, engine, [plan])[0] if monitoring else plan


def with_monitoring(cfg: Config, engine: Engine, plans: Sequence[RunPlan]) -> list[RunPlan]:
    """The plans with their drift monitoring (jobs with ``monitor.enabled``): every plan's
    reference and previous profile looked up together, in a few queries (reads only)."""
    requests = [_monitor_request(cfg.job(p.job), p) for p in plans]
    monitors = iter(monitor_plans(engine, [r for r in requests if r is not None]))
    return [p if r is None else dataclasses.replace(p, monitor=next(monitors))
            for p, r in zip(plans, requests, strict=True)]


# -- the models of a job: its champion and its challengers ------------------------------

Candidate = Scorer | FailedChallenger


def resolve_models(engine: Engine, job: JobConfig, models: ModelCache) -> tuple[Scorer, list[Candidate]]:
    """The job's champion (:func:`resolve_champion`) and its challengers, each loaded once
    per invocation. A challenger that cannot be resolved or loaded is a
    :class:`FailedChallenger`, recorded with the run: it never stops the champion.
    """
    champion = resolve_champion(engine, job, models)
    if not job.model.is_registry or not job.challengers:
        return champion, []
    with _registry_reads(job):
        with engine.connect() as conn:
            challengers = [_challenger(conn, job, models, item) for item in job.challengers]
    return champion, [c for c in challengers if not _is_the_champion(job, champion, c)]


def _is_the_champion(job: JobConfig, champion: Scorer, c: Candidate) -> bool:
    """A challenger whose alias now names the champion's own version (it was just promoted)
    would be compared with itself: it is left out, with a log line."""
    if isinstance(c, Scorer) and c.model.sha256 == champion.model.sha256:
        log.info("job %s: challenger %s is the champion's own version %s (promoted?); not scored in shadow. "
                 "Point its alias at the next candidate.", job.name, c.label, champion.stamp.version)
        return True
    return False


def resolve_champion(engine: Engine, job: JobConfig, models: ModelCache) -> Scorer:
    """The job's champion: its model file, or the registry version its alias or version
    names (or ``models.version`` when pinned); one that cannot be loaded raises (exit 2)."""
    m = job.model
    if not m.is_registry:
        if models.version is not None:
            raise UsageError(
                f"job {job.name!r}: a registry version (--version {models.version}) was given, but the job's "
                f"model is the file {m.path}, which has no versions. Drop --version, or give the job "
                "model.registry."
            )
        model = models.load_path(job)
        return Scorer("champion", "champion", model, _stamp(model))
    ref: str | int | None = models.version or m.version or m.alias
    assert ref is not None
    with _registry_reads(job):
        with engine.connect() as conn:
            model, stamp = models.load_registry(conn, job, ref)
    return Scorer("champion", "champion", model, stamp)


@contextlib.contextmanager
def _registry_reads(job: JobConfig) -> Iterator[None]:
    try:
        yield
    except sa.exc.SQLAlchemyError as exc:
        raise DatabaseError(f"job {job.name!r}: reading model registry {job.model.registry!r} failed: "
                            f"{mask_text(first_line(exc))}") from exc


def _challenger(conn: sa.Connection, job: JobConfig, models: ModelCache, ref: str | int) -> Candidate:
    label = ref if isinstance(ref, str) else version_label(ref)
    try:
        model, stamp = models.load_registry(conn, job, ref)
    except BatchScorerError as exc:
        return FailedChallenger(label, None, mask_text(str(exc)))
    return Scorer("challenger", label, model, stamp)


def _usable(candidates: list[Candidate]) -> list[Scorer]:
    return [c for c in candidates if isinstance(c, Scorer)]


def _with_columns(c: Candidate, columns: SourceColumns) -> Candidate:
    """A challenger whose features the source lacks is recorded, not read."""
    if isinstance(c, FailedChallenger):
        return c
    missing = [f for f in c.model.features if f not in columns.types]
    if not missing:
        return c
    return FailedChallenger(c.label, c.stamp.version,
                            f"model {c.model.source}: the source lacks feature column(s) {missing}")


def _probed(job: str, want_score: bool | str, c: Candidate, first: pd.DataFrame, kind: str,
            classifier: bool) -> Candidate:
    """A challenger through the champion's checks on the probe row; one that fails them,
    is not the same kind of model (a regressor shadowing a classifier: promote refuses it
    too), or predicts values the shadow table (typed by the champion) cannot hold, is recorded."""
    if isinstance(c, FailedChallenger):
        return c
    if c.model.is_classifier != classifier:
        theirs, ours = ("a classifier", "a regressor") if c.model.is_classifier else ("a regressor", "a classifier")
        return FailedChallenger(c.label, c.stamp.version,
                                f"model {c.model.source} is {theirs}, but the champion is {ours}: its predictions "
                                "cannot be compared (register it under another name)")
    try:
        check_score_contract(job, want_score, c.model)
        described = fully_described(c.model.estimator, c.model.kind)
        probe = Probe(None, None) if described else probe_model(job, c.model, first)
        theirs = prediction_kind(c.model, probe.predict_dtype_kind)
    except BatchScorerError as exc:
        return FailedChallenger(c.label, c.stamp.version, mask_text(str(exc)))
    # What a prediction column of the champion's kind holds (as output tables do).
    if not holds(kind, theirs):
        return FailedChallenger(
            c.label, c.stamp.version,
            f"model {c.model.source} predicts {theirs} values, but the champion's (and so the shadow "
            f"table's) predictions are {kind}",
        )
    return c


def with_shared_outputs(engine: Engine, plans: Sequence[RunPlan]) -> list[RunPlan]:
    """``plans``, those that share an output table not created yet defining it with one
    prediction column for all of them: of the kind that holds every one's predictions
    (text holds any; float holds integers and booleans), and one form of its ``_daily``
    view. Else both would be those of whichever job of the batch happened to create the
    table first, and the others would fail on it then and on every later run."""
    by_table: dict[str, list[RunPlan]] = {}
    for plan in plans:
        by_table.setdefault(plan.output_name, []).append(plan)
    wider: dict[str, RunPlan] = {}
    for name, group in by_table.items():
        kind = widest_kind(p.prediction_kind for p in group)
        if all(p.prediction_kind == kind for p in group):
            continue  # one kind (a table of one job, too): nothing to agree on
        schema, table = split_table_name(name)
        if catalog(engine).has_table(table, schema):
            continue  # it exists: each job is checked against its column
        # Its _daily view alike too: counts per prediction unless numbers that regressors made.
        counts = kind != "float" or all(p.classifier for p in group)
        for plan in group:
            output = output_definition(name, plan.source, plan.columns, kind)
            wider[plan.job] = dataclasses.replace(plan, output=output, shared_counts_view=counts)
    return [wider.get(p.job, p) for p in plans]


def _shadow_table(engine: Engine, plan: RunPlan) -> sa.Table | None:
    """The shadow twin when the run scores challengers, or when it exists (a re-run then
    removes the rows of the runs it replaces there too); an existing one is checked."""
    schema, name = split_table_name(shadow_table_name(plan.output_name))
    if not plan.challengers and not catalog(engine).has_table(name, schema):
        return None  # decided by name: defining the table costs a millisecond a job in a fleet
    table = shadow_definition(plan)
    prepare_output_table(engine, table, plan.prediction_kind, plan.job, plan.classifier, create=False, shadow=True)
    return table


def _monitor_request(job: JobConfig, plan: RunPlan) -> MonitorRequest | None:
    """What the job's drift monitoring needs to look up (None: monitoring is off)."""
    m = job.monitor
    if not m.enabled:
        return None
    settings = MonitorSettings(bins=m.bins, warn_psi=m.warn_psi, alert_psi=m.alert_psi, on_alert=m.on_alert)
    champion = plan.champion
    return MonitorRequest(settings, plan.job, plan.as_of, champion.model, champion.stamp, plan.prediction_kind,
                          plan.settings.want_score, plan.columns.types)


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
