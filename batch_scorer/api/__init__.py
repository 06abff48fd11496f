"""The Python API: every CLI command is one function here, and works the same from a notebook::

    from batch_scorer import api
    results = api.run("config.yaml", ["churn"], as_of="2026-03-31")
    results.raise_for_failures()          # or api.run(..., check=True)

Each function takes a config (a path, a loaded :class:`~batch_scorer.config.Config`,
a dict, or None for ``$BATCH_SCORER_CONFIG`` / ./config.yaml), owns the engine it
opens (one pooled engine per call, disposed when it returns), and raises
:class:`batch_scorer.errors.BatchScorerError` subclasses for bad input (``BatchScorerError``,
``ConfigError``, ``UsageError`` and ``RunFailed`` are importable from here too). The
modules group them by what they are for; import them from here.
"""

from __future__ import annotations

from batch_scorer.api._common import Check, ConfigLike, as_config, select_jobs
from batch_scorer.api.fleet import JobInfo, graph, jobs
from batch_scorer.api.maintenance import PruneReport, prune
from batch_scorer.api.monitoring import Evaluation, ReportFile, evaluate, report
from batch_scorer.api.registry import (
    export_model,
    list_models,
    model_history,
    promote_model,
    register_model,
    rollback_model,
)
from batch_scorer.api.runs import backfill, retract, run, runs
from batch_scorer.api.schedule import next_fires, schedule
from batch_scorer.api.setup import InitReport, init_db, validate
from batch_scorer.errors import BatchScorerError, ConfigError, RunFailed, UsageError
from batch_scorer.runtime.outcome import RunResult, RunResults

__all__ = [
    "BatchScorerError", "Check", "ConfigError", "ConfigLike", "Evaluation", "InitReport", "JobInfo", "PruneReport",
    "ReportFile", "RunFailed", "RunResult", "RunResults", "UsageError", "as_config", "backfill", "evaluate",
    "export_model", "graph", "init_db", "jobs", "list_models", "model_history", "next_fires", "promote_model", "prune",
    "register_model", "report", "retract", "rollback_model", "run", "runs", "schedule", "select_jobs", "validate",
]
