"""Scheduling: ``next_fires``, ``schedule`` (the daemon)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from batch_scorer.api._common import ConfigLike, as_config, open_engine, parallel_jobs, pool_size_for, threads
from batch_scorer.config import Config, load_config
from batch_scorer.errors import UsageError
from batch_scorer.scheduling.fires import Fire

log = logging.getLogger(__name__)


def next_fires(
    config: ConfigLike = None, count: int = 5, *, after: datetime | None = None, jobs: Sequence[str] = ()
) -> list[Fire]:
    """The next ``count`` fire times and as_of values of each scheduled job. Runs nothing,
    needs no database.

    ``after`` defaults to now; a naive datetime is read in the configured timezone."""
    if count < 1:
        raise UsageError("count (--next) must be at least 1")
    from batch_scorer.scheduling import daemon as scheduler  # APScheduler: only for schedules (25 ms to import)

    return scheduler.upcoming(as_config(config), count, after, jobs)


def schedule(config: ConfigLike = None, jobs: Sequence[str] = ()) -> int:
    """Run the scheduler daemon in this process until SIGTERM/SIGINT; returns 0.

    Every job with a ``schedule:`` (or only ``jobs``) runs on its cron in the
    configured timezone; missed fires within ``scheduler.catch_up_hours`` run once on
    start. SIGHUP re-reads the config file (given a Config object, there is none to
    re-read). See :mod:`batch_scorer.scheduling.daemon`."""
    from batch_scorer.scheduling import daemon as scheduler  # APScheduler: only for schedules (25 ms to import)

    cfg = as_config(config)
    source = cfg.source_file
    reload = None if isinstance(config, Config) or source is None else (lambda: load_config(source))
    # Sized for defaults.parallel_jobs jobs at once (a reload may lower it, not raise it).
    with open_engine(cfg, pool_size=pool_size_for(parallel_jobs(cfg, None))) as engine, threads(cfg):
        return scheduler.Daemon(cfg, engine, jobs, reload=reload).serve()


