"""What every API function shares: reading the config, opening the engine, the thread cap,
normalising dates and arguments."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy.engine import Engine

from batch_scorer.config import Config, load_config
from batch_scorer.dates import check_not_future, to_date
from batch_scorer.errors import EXIT_OK, UsageError
from batch_scorer.executors.threads import limit_model_threads, shutdown_pools
from batch_scorer.runtime.jobs import threads_of
from batch_scorer.storage.db import engine_for
from batch_scorer.storage.schema import Trigger

log = logging.getLogger(__name__)

ConfigLike = Config | str | os.PathLike[str] | Mapping[str, Any] | None


def as_config(config: ConfigLike) -> Config:
    """Accept a loaded Config, a path, a dict, or None (``$BATCH_SCORER_CONFIG`` / ./config.yaml)."""
    if isinstance(config, Config):
        return config
    return load_config(config)  # type: ignore[arg-type]


def select_jobs(cfg: Config, names: Sequence[str] | str, all_jobs: bool) -> list[str]:
    """The expanded job names to act on (a matrix job's name selects every expansion)."""
    selected = cfg.select(names, all_jobs)  # type: ignore[arg-type]
    if all_jobs and not selected:
        raise UsageError(f"no jobs are defined in {cfg.source_file or 'the config'}")
    return selected


def trigger_name(value: str) -> str:
    try:
        return Trigger(value).value
    except ValueError:
        raise UsageError(f"trigger {value!r} is not one of {', '.join(t.value for t in Trigger)}") from None


MAX_PARALLEL = 64  # as defaults.parallel_jobs and --parallel allow


def parallel_jobs(cfg: Config, parallel: int | None) -> int:
    value = parallel if parallel is not None else cfg.defaults.parallel_jobs
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_PARALLEL:
        raise UsageError(f"parallel must be a whole number from 1 to {MAX_PARALLEL} (as --parallel and "
                         f"defaults.parallel_jobs), not {value!r}")
    return value


def pool_size_for(jobs_at_once: int) -> int:
    """The connection pool an invocation running up to ``jobs_at_once`` jobs needs: a job's
    lock session and publication, its read group's stream and a spare for ledger updates
    (4 each), and 2 for the invocation's own queries (planning, the daemon's checks)."""
    return 4 * jobs_at_once + 2


@contextlib.contextmanager
def open_engine(cfg: Config, *, create: bool = True, pool_size: int | None = None) -> Iterator[Engine]:
    with engine_for(cfg.database.require_url(), cfg.database.busy_timeout_seconds, pool_size=pool_size,
                    create=create) as engine:
        yield engine


@contextlib.contextmanager
def threads(cfg: Config) -> Iterator[None]:
    """The model thread cap for one command; the scoring threads end with it."""
    try:
        with limit_model_threads(threads_of(cfg)):
            yield
    finally:
        shutdown_pools()


def as_of_date(cfg: Config, value: Any, allow_future: bool) -> date | None:
    if value is None:
        return None
    day = to_date(value, cfg.timezone)
    check_not_future(day, cfg.timezone, cfg.defaults.future_days, allow_future)
    return day


@dataclass(frozen=True)
class Check:
    """The outcome of validating (or initialising) one job."""

    job: str
    ok: bool
    message: str
    exit_code: int = EXIT_OK


