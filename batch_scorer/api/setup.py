"""Setting up and checking: ``init_db``, ``validate``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from batch_scorer.api._common import Check, ConfigLike, as_config, open_engine, select_jobs
from batch_scorer.config import Config
from batch_scorer.errors import EXIT_OK, BatchScorerError, SourceError
from batch_scorer.masking import first_line, mask_text
from batch_scorer.names import split_table_name
from batch_scorer.runtime.jobs import job_as_of
from batch_scorer.runtime.plan import ModelCache, SourceProbes, build_plan, with_shared_outputs
from batch_scorer.runtime.spec import RunPlan
from batch_scorer.storage.catalog import catalog
from batch_scorer.storage.ddl import create_tool_tables
from batch_scorer.storage.sinks.output import missing, prepare_output_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InitReport:
    """What ``init-db`` did: one line per table or job, and whether everything is ready."""

    lines: list[str]
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def exit_code(self) -> int:
        return max((c.exit_code for c in self.checks), default=EXIT_OK)


def init_db(config: ConfigLike = None) -> InitReport:
    """Create the tool's tables and views, and each job's output table and views. Idempotent.

    A job whose output could not be created (its model or source is missing, or
    the role may not create it) makes the report not ok (exit code non-zero)."""
    cfg = as_config(config)
    lines, checks = [], []
    with open_engine(cfg) as engine:
        create_tool_tables(engine)
        lines.append("tool tables and views: ready")
        plans = _init_plans(cfg, engine)
        for name in cfg.jobs:
            try:
                plan = plans[name]
                if isinstance(plan, BaseException):
                    raise plan
                prepare_output_table(engine, plan.output, plan.prediction_kind, name, plan.counts_view, create=True)
                if plan.shadow is not None:  # challengers' rows: the scorer may not create it either
                    prepare_output_table(engine, plan.shadow, plan.prediction_kind, name, plan.classifier,
                                         create=True, shadow=True)
            except (BatchScorerError, sa.exc.SQLAlchemyError) as exc:
                checks.append(_failed_check(name, exc))
                lines.append(f"job {name}: output table NOT ready: {checks[-1].message}")
                continue
            checks.append(Check(name, True, f"output table {plan.output_name} and its views: ready"))
            lines.append(f"job {name}: {checks[-1].message}")
    return InitReport(lines, checks)


def _init_plans(cfg: Config, engine: Engine) -> dict[str, RunPlan | BaseException]:
    """Every job's plan (or why it has none), those sharing an output table defining it alike
    (:func:`batch_scorer.runtime.plan.with_shared_outputs`), as a run of them all would."""
    models, probes = ModelCache(), SourceProbes()  # jobs on one source ask it once
    out: dict[str, RunPlan | BaseException] = {}
    for name in cfg.jobs:
        try:
            out[name] = build_plan(cfg, engine, name, job_as_of(cfg, name), "manual", models, probes=probes)
        except (BatchScorerError, sa.exc.SQLAlchemyError) as exc:
            out[name] = exc
    valid = with_shared_outputs(engine, [p for p in out.values() if isinstance(p, RunPlan)])
    return {**out, **{p.job: p for p in valid}}


def _failed_check(name: str, exc: BaseException) -> Check:
    if isinstance(exc, BatchScorerError):
        return Check(name, False, mask_text(str(exc)), exc.exit_code)
    return Check(name, False, f"database error: {mask_text(first_line(exc))}", 1)


def validate(config: ConfigLike = None, jobs: Sequence[str] = ()) -> list[Check]:
    """Check config, connection, model (pin, load, contract) and source columns, and that each
    output table exists or can be created. Writes nothing (not even a SQLite file)."""
    cfg = as_config(config)
    names = select_jobs(cfg, jobs, all_jobs=not jobs) if cfg.jobs or jobs else []
    checks = []
    with open_engine(cfg, create=False) as engine:
        models, probes = ModelCache(), SourceProbes()  # jobs on one source ask it once
        creatable = _can_create(engine)
        for name in names:
            try:
                plan = build_plan(cfg, engine, name, job_as_of(cfg, name), "manual", models, probes=probes,
                                  always_probe=True)
            except BatchScorerError as exc:
                waiting = _upstream_tables_missing(cfg, engine, name) if isinstance(exc, SourceError) else []
                checks.append(_waiting_check(name, waiting) if waiting else _failed_check(name, exc))
                continue
            m = plan.champion.model
            absent = missing(engine, plan.output, plan.classifier)
            if absent and not creatable:
                checks.append(Check(name, False, (
                    f"{', '.join(absent)} do(es) not exist and {engine.url.username or 'this user'} may not "
                    "create it: run `batch-scorer init-db` as the schema owner"), 2))
                continue
            output = f"output {plan.output_name}" + (" (will be created)" if absent else "")
            # A challenger that cannot be used never stops the champion; say so now, not only in the run.
            unusable = "".join(f"; challenger {f.label} will not be scored: {f.error}" for f in plan.failed_challengers)
            checks.append(Check(name, True, f"model {m.version} ({len(m.features)} features, "
                                            f"{_kind(m)}), source columns present, {output}{unusable}"))
    return checks


def _upstream_tables_missing(cfg: Config, engine: Engine, name: str) -> list[tuple[str, str]]:
    """``(upstream job, its output table)`` for the ``after:`` jobs of ``name`` whose output
    table does not exist yet: a source that reads them cannot be checked before they run."""
    out = []
    for upstream in cfg.job(name).depends_on:
        table = cfg.job(upstream).output.table
        schema, bare = split_table_name(table)
        if not catalog(engine).has_table(bare, schema):  # one listing per schema for every job
            out.append((upstream, table))
    return out


def _waiting_check(name: str, waiting: list[tuple[str, str]]) -> Check:
    """A job whose source reads what its upstream jobs have not published yet: not an error
    (``run --all`` plans it after them), but its source columns are unchecked."""
    tables = ", ".join(sorted({t for _, t in waiting}))
    jobs = ", ".join(sorted({j for j, _ in waiting}))
    return Check(name, True, (
        f"source not checked yet: it runs after {jobs}, whose output table(s) {tables} do not exist "
        "yet (their first run creates them; so does `batch-scorer init-db`); model and config checked"))


def _kind(model: Any) -> str:
    describe = getattr(model, "describe_kind", None)
    if callable(describe):
        return str(describe())
    return "classifier" if model.is_classifier else "regressor"


def _can_create(engine: Engine) -> bool:
    if engine.dialect.name != "postgresql":
        return True
    with engine.connect() as conn:
        return bool(conn.execute(sa.text("SELECT has_schema_privilege(current_schema(), 'CREATE')")).scalar())


