"""batch-scorer: deploy scikit-learn models to a database.

The public Python API (the CLI is a thin layer over it)::

    from batch_scorer import load_config, run, init_db, validate, runs
    from batch_scorer import backfill, next_fires, schedule
"""

from __future__ import annotations

from batch_scorer.api import backfill, init_db, next_fires, run, runs, schedule, validate
from batch_scorer.config import Config, load_config
from batch_scorer.errors import BatchScorerError, ConfigError, RunFailed, UsageError
from batch_scorer.runtime.outcome import RunResult

__all__ = [
    "BatchScorerError", "Config", "ConfigError", "RunFailed", "RunResult", "UsageError", "backfill", "init_db",
    "load_config", "next_fires", "run", "runs", "schedule", "validate",
]
