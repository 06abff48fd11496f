"""Monitoring: ``evaluate`` (realized performance into ``model_metrics``) and ``report``
(one self-contained HTML file of runs, drift and metrics). Drift itself is computed
by every run; docs/monitoring.md describes all of it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from sqlalchemy.engine import Engine

from batch_scorer.api._common import ConfigLike, as_config, open_engine, select_jobs
from batch_scorer.config import Config, JobConfig
from batch_scorer.errors import BatchScorerError, SourceError, UsageError
from batch_scorer.masking import mask_text
from batch_scorer.monitoring.evaluation import Evaluation, EvaluationSpec, evaluate_job
from batch_scorer.monitoring.report import JobReport, render_report
from batch_scorer.monitoring.reporting import job_report
from batch_scorer.runtime.plan import ModelCache, champion_model
from batch_scorer.storage import profiles
from batch_scorer.storage.ddl import create_tool_tables
from batch_scorer.storage.schema import utcnow
from batch_scorer.storage.sources.spec import SourceSpec
from batch_scorer.storage.sources.sql import probe_columns

__all__ = ["Evaluation", "ReportFile", "evaluate", "report"]


def evaluate(config: ConfigLike = None, jobs: Sequence[str] = (), *, check: bool = True) -> list[Evaluation]:
    """Join each job's labels to its published predictions and store the metrics of the
    champion and of each challenger per as_of in ``model_metrics``, replacing the job's
    earlier figures for the as_ofs evaluated (docs/monitoring.md).

    ``jobs``: names (a matrix name selects its expansions); default every job with a
    ``labels:`` section. A named job without one is a UsageError (exit 2). Each job is
    evaluated on its own: one that cannot be (its model, its labels) stores nothing and
    the others go on. Then, with ``check`` (the default), the first such job's error is
    raised, its ``.evaluations`` holding every job's :class:`Evaluation`; with
    ``check=False`` they are returned, a failed one with its ``error`` and ``exit_code``.
    """
    cfg = as_config(config)
    names = _labelled(cfg, jobs)
    with open_engine(cfg) as engine:
        create_tool_tables(engine)
        models = ModelCache()
        done = [_evaluate_one(cfg, engine, name, models) for name in names]
    failed = [e for e in done if e.cause is not None]
    if check and failed:
        error = failed[0].cause
        error.evaluations = done  # type: ignore[union-attr]
        raise error  # type: ignore[misc]
    return done


def _evaluate_one(cfg: Config, engine: Engine, name: str, models: ModelCache) -> Evaluation:
    try:
        return evaluate_job(engine, _evaluation_spec(cfg, engine, cfg.job(name), models))
    except BatchScorerError as exc:
        return Evaluation(name, error=mask_text(str(exc)), exit_code=exc.exit_code, cause=exc)


def _labelled(cfg: Config, jobs: Sequence[str]) -> list[str]:
    if jobs:
        names = select_jobs(cfg, jobs, False)
        without = [n for n in names if cfg.job(n).labels is None]
        if without:
            raise UsageError(
                f"job(s) {', '.join(without)} have no labels: section, so there is nothing to evaluate them "
                "against; add labels: {table: ..., as_of_column: ..., label_column: ...} (or query:) to the job"
            )
        return names
    names = [n for n in cfg.jobs if cfg.job(n).labels is not None]
    if not names:
        raise UsageError(f"no job in {cfg.source_file or 'the config'} has a labels: section; nothing to evaluate")
    return names


def _evaluation_spec(cfg: Config, engine: Engine, job: JobConfig, models: ModelCache) -> EvaluationSpec:
    labels = job.labels
    assert labels is not None
    keys = tuple(labels.key or job.source.key)
    if len(keys) != len(job.source.key):
        raise UsageError(
            f"job {job.name!r}: labels.key {list(keys)} has {len(keys)} column(s) but source.key "
            f"{job.source.key} has {len(job.source.key)}; they are matched position by position"
        )
    spec = SourceSpec(job=job.name, key=keys, table=labels.table, query=labels.query,
                      as_of_column=labels.as_of_column, params=tuple(labels.params.items()), timezone=cfg.timezone,
                      section="labels")
    _check_label_columns(engine, spec, labels.label_column)
    model = champion_model(cfg, engine, job, models)
    return EvaluationSpec(job=job.name, output=job.output.table, keys=tuple(job.source.key), labels=spec,
                          label_column=labels.label_column, classifier=model.is_classifier,
                          classes=model.classes, chunk_size=cfg.chunk_size(job))


def _check_label_columns(engine: Engine, spec: SourceSpec, label_column: str) -> None:
    """A labels source lacking a column is one clear error, before anything is read."""
    with engine.connect() as conn:
        have = probe_columns(conn, spec, date.today()).names
    needed = [*spec.key, label_column, *(["as_of"] if spec.query is not None else [])]
    missing = [c for c in needed if c not in have]
    if spec.as_of_column and spec.as_of_column not in have:
        missing.append(spec.as_of_column)
    if missing:
        raise SourceError(
            f"job {spec.job!r}: the labels source {spec.describe()!r} lacks column(s) {missing}; it has "
            f"{', '.join(have) or '(no columns)'}. Fix labels.key, labels.label_column or labels.as_of_column"
            + (" (a labels query must return a column named as_of)." if spec.query is not None else ".")
        )


@dataclass(frozen=True)
class ReportFile:
    """The report written: where, for how many jobs, how large."""

    path: Path
    jobs: int
    bytes: int


def report(config: ConfigLike = None, jobs: Sequence[str] = (), *, out: str | os.PathLike[str] = "report.html"
           ) -> ReportFile:
    """Write one self-contained HTML report of ``jobs`` (default every job) to ``out``: per job
    its runs over time, its score against the reference, PSI per feature over the last runs,
    and its metrics per model version and role. Needs the ``report`` extra (matplotlib)."""
    cfg = as_config(config)
    names = select_jobs(cfg, jobs, not jobs)
    with open_engine(cfg, create=False) as engine:
        reports = _job_reports(cfg, engine, names)
        where = f"{engine.url.get_backend_name()} database {engine.url.database}"
    html = render_report(reports, note=f"{len(names)} job(s), {where}, generated {utcnow():%Y-%m-%d %H:%M} UTC")
    path = Path(out)
    _write_atomically(path, html)
    return ReportFile(path, len(names), path.stat().st_size)


def _job_reports(cfg: Config, engine: Engine, names: Sequence[str]) -> list[JobReport]:
    if not profiles.has_monitoring_tables(engine):  # no run yet: created with the ledger by the first
        return [JobReport(name) for name in names]
    with engine.connect() as conn:
        return [job_report(conn, name, cfg.job(name).monitor.warn_psi, cfg.job(name).monitor.alert_psi)
                for name in names]


def _write_atomically(path: Path, text: str) -> None:
    """The whole file or the old one: a reader (a web server, a mail job) never sees half."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    except OSError as exc:
        raise UsageError(f"cannot write the report to {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the report from the web server that serves it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
