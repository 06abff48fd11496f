"""The model registry: register a model (from a file or straight from a notebook), list
versions, promote, roll back, read the history, export a version's file.

A promote (and a register that sets an alias) first checks the version against
every job whose ``model.registry`` is that name, with the checks a run makes
before it records anything (the job's source has the model's columns, the score
contract, the output table's prediction column), plus the kind of the output
table: a regressor may not take over a classifier's table, nor the reverse.
It refuses with exit 2 naming the job and what does not fit::

    from batch_scorer import api
    v = api.register_model("config.yaml", "churn_DE", fitted_pipeline, reference=train_df)
    api.promote_model("config.yaml", "churn_DE", v.version.version)
"""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch_scorer.api._common import ConfigLike, as_config, open_engine
from batch_scorer.config import Config, JobConfig
from batch_scorer.errors import BatchScorerError, ModelError, UsageError
from batch_scorer.models import registry
from batch_scorer.models.loader import LoadedModel, format_for, read_model_file
from batch_scorer.names import check_plain_name, check_table_name, split_table_name
from batch_scorer.runtime.jobs import job_as_of
from batch_scorer.runtime.monitor import profile_reference, reference_chunks, reference_rows
from batch_scorer.runtime.plan import ModelCache, build_plan
from batch_scorer.storage.ddl import create_tool_tables
from batch_scorer.storage.views import daily_view_name

log = logging.getLogger(__name__)

Reference = pd.DataFrame | str | os.PathLike[str] | None


def register_model(
    config: ConfigLike, name: str, estimator_or_path: Any, reference: Reference = None,
    alias: str | None = None, note: str | None = None, *, trusted_types: Sequence[str] = (),
) -> registry.Registered:
    """Register a model under ``name``: a fitted estimator (serialized with joblib) or a
    .joblib/.pkl/.skops file (read as bytes). The same bytes registered twice give the
    existing version. ``reference``: the training data (a DataFrame, a table name, or a
    .sql file) profiled as the version's drift reference. ``alias``: point it at the new
    version, after the checks of :func:`promote_model`. skops files may hold the types the
    jobs using ``name`` trust (``model.trusted_types``) and ``trusted_types``."""
    cfg = as_config(config)
    _check_name(name, "model name")
    jobs = jobs_using(cfg, name)
    data, fmt, source = _artifact(estimator_or_path)
    trusted = list(dict.fromkeys([*trusted_types, *(t for j in jobs for t in j.model.trusted_types)]))
    features = next((j.features for j in jobs if j.features), None)
    model = registry.describe(name, data, fmt, source=source, trusted_types=trusted, features=features)
    if alias is not None:
        _check_name(alias, "alias")
    with open_engine(cfg) as engine:
        create_tool_tables(engine)
        bins = next((j.monitor.bins for j in jobs), 10)
        profile = _reference_profile(engine, name, model, reference, bins) if reference is not None else []
        done = registry.register(engine, name, data, model, note=note, profile=profile)
        log.info("model %s %s: %s (sha256 %s)", name, done.version.label,
                 "registered" if done.created else "already registered", done.version.sha256[:12])
        if alias is None or alias in done.version.aliases:
            return dataclasses.replace(done, version=_now(engine, done.version))
        try:
            check_version(cfg, engine, name, done.version.version)
        except BatchScorerError as exc:
            raise _reworded(exc, f"{exc} (model {name} {done.version.label} is registered; alias {alias!r} "
                                 "was not set)") from exc
        move = registry.set_alias(engine, name, alias, done.version.version, registry.REGISTER, note)
        return registry.Registered(_now(engine, done.version), done.created, move.event)


def _now(engine: Engine, version: registry.ModelVersion) -> registry.ModelVersion:
    """``version`` as the registry has it now: with the aliases pointing at it (``models list``)."""
    return next(v for v in registry.list_versions(engine, version.name) if v.version == version.version)


def promote_model(
    config: ConfigLike, name: str, version: int, alias: str = registry.DEFAULT_ALIAS, note: str | None = None,
) -> registry.AliasMove:
    """Point ``alias`` at ``version`` after checking it against every job using ``name``
    (module doc); raises :class:`ModelError`/:class:`SourceError` (exit 2) naming the job."""
    cfg = as_config(config)
    _check_name(name, "model name")
    _check_name(alias, "alias")
    with open_engine(cfg) as engine:
        create_tool_tables(engine)
        registry.get_version(engine, name, int(version))
        check_version(cfg, engine, name, int(version))
        return registry.set_alias(engine, name, alias, int(version), registry.PROMOTE, note)


def rollback_model(
    config: ConfigLike, name: str, alias: str = registry.DEFAULT_ALIAS, note: str | None = None,
) -> registry.AliasMove:
    """Move ``alias`` back to the version it held before its latest change (from the events).

    Not checked against the jobs: it is the way back to what ran before, and must
    work when nothing else does. :class:`UsageError` when there is no earlier version."""
    cfg = as_config(config)
    with open_engine(cfg) as engine:
        create_tool_tables(engine)
        return registry.rollback(engine, name, alias, note)


def list_models(config: ConfigLike, name: str | None = None) -> list[registry.ModelVersion]:
    """Every registered version (of ``name``), with the aliases pointing at each."""
    cfg = as_config(config)
    with open_engine(cfg, create=False) as engine:
        return registry.list_versions(engine, name)


def model_history(config: ConfigLike, name: str) -> list[registry.AliasEvent]:
    """Every alias change of ``name``, oldest first: who, when, from, to, why."""
    cfg = as_config(config)
    with open_engine(cfg, create=False) as engine:
        return registry.history(engine, name)


def export_model(config: ConfigLike, name: str, version: int, path: str | os.PathLike[str]) -> registry.ModelVersion:
    """Write a version's bytes (sha256-checked) to ``path``; loading that file gives the
    registered model. Raises :class:`UsageError` for an unknown version."""
    cfg = as_config(config)
    target = Path(path)
    with open_engine(cfg, create=False) as engine:
        entry, data = registry.read_artifact(engine, name, int(version))
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(target)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None
    return entry


def jobs_using(cfg: Config, name: str) -> list[JobConfig]:
    """Every job (matrix expansion) whose ``model.registry`` is ``name``."""
    return [j for j in cfg.jobs.values() if j.model.registry == name]


def check_version(cfg: Config, engine: Engine, name: str, version: int) -> None:
    """Check ``version`` of ``name`` against every job using it (module doc); raises on the first misfit."""
    for job in jobs_using(cfg, name):
        try:
            plan = build_plan(cfg, engine, job.name, job_as_of(cfg, job.name), "manual", ModelCache(version=version),
                              monitoring=False)
        except BatchScorerError as exc:
            reason = str(exc).removeprefix(f"job {job.name!r}: ")
            raise _reworded(exc, f"cannot use model {name} {registry.version_label(version)} for job "
                                 f"{job.name!r}: {reason}") from exc
        _check_output_kind(engine, job.name, plan.output_name, plan.champion.model)


def _check_output_kind(engine: Engine, job: str, output: str, model: LoadedModel) -> None:
    """A classifier's table (its _daily view counts classes) takes classifiers only, and a
    regressor's table regressors only."""
    schema, view = split_table_name(daily_view_name(output))
    if view not in sa.inspect(engine).get_view_names(schema=schema):
        return
    columns = {c["name"] for c in sa.inspect(engine).get_columns(view, schema=schema)}
    table_is_classifier = "share" in columns
    if table_is_classifier != model.is_classifier:
        have = "a classifier's" if table_is_classifier else "a regressor's"
        raise ModelError(
            f"job {job!r}: model {model.source} is a {model.describe_kind()}, but output table {output!r} is "
            f"{have} (its predictions, _daily view and readers expect that kind). Give the job its own "
            "output.table, or register a model of the same kind."
        )


def _artifact(value: Any) -> tuple[bytes, str, str]:
    """Bytes, format and a description of what is being registered."""
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        return read_model_file("", path, command="models register"), format_for(path), f"file {path}"
    if isinstance(value, bytes):
        raise UsageError("register_model takes a fitted estimator or the path of a model file, not bytes")
    buffer = io.BytesIO()
    joblib.dump(value, buffer)
    return buffer.getvalue(), "joblib", f"estimator {type(value).__name__}"


def _reference_profile(
    engine: Engine, name: str, model: LoadedModel, reference: pd.DataFrame | str | os.PathLike[str], bins: int,
) -> list[dict[str, Any]]:
    """The reference's profile rows, profiled as a run of the version profiles its rows
    (:func:`~batch_scorer.runtime.monitor.profile_reference`: features as the model sees
    them, its score, for a classifier the predicted class). A table or a .sql file is read
    in chunks, twice (exact deciles, bounded memory)."""
    if isinstance(reference, pd.DataFrame):
        missing = [f for f in model.features if f not in reference.columns]
        if missing:
            raise UsageError(f"model {name!r}: the reference lacks feature column(s) {missing} of the model")
        source: pd.DataFrame | Callable[[], Iterator[pd.DataFrame]] = reference
    else:
        text = str(reference)
        if not text.lower().endswith(".sql"):
            try:
                check_table_name(text, "reference table")
            except ValueError as exc:
                raise UsageError(f"{exc}; give a table name or a .sql file") from None
        source = reference_chunks(engine, text, model)
    profile, _ = profile_reference(model, source, bins)
    if not any(profile.rows(f) for f in profile.bins):
        raise UsageError(f"model {name!r}: the reference has no rows the model can score")
    return reference_rows(profile)


def _reworded(exc: BatchScorerError, text: str) -> BatchScorerError:
    """The same error (class, exit code) saying ``text``."""
    new = copy.copy(exc)
    new.args = (text,)
    return new


def _check_name(value: str, what: str) -> None:
    try:
        check_plain_name(value, what)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
