"""The one exception hierarchy of batch-scorer.

Library code raises these; the CLI (``batch_scorer.cli``) turns each into one
``Error: ...`` paragraph and the exit code it carries. Nothing else maps
exceptions to exit codes.
"""

from __future__ import annotations

import signal
from datetime import date
from typing import Any

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_LOCKED = 3


class BatchScorerError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code: int = EXIT_RUN_FAILED
    # The ledger row of the run that failed, once there is one (set by the run, runtime/run.py).
    run_id: int | None = None


class ConfigError(BatchScorerError):
    """Raised by ``config`` for an invalid, unreadable or incomplete config file."""

    exit_code = EXIT_BAD_INPUT


class UsageError(BatchScorerError):
    """Raised by the API for bad arguments: unknown job, impossible dates."""

    exit_code = EXIT_BAD_INPUT


class ModelError(BatchScorerError):
    """Raised by ``model`` for a missing, mis-pinned, corrupt or unusable model file."""

    exit_code = EXIT_BAD_INPUT


class SourceError(BatchScorerError):
    """Raised by ``source``/``sink`` when tables or columns do not match the job."""

    exit_code = EXIT_BAD_INPUT


class DatabaseError(BatchScorerError):
    """Raised by the storage layer when the database cannot be reached or fails; the URL is masked."""

    exit_code = EXIT_RUN_FAILED


class RunFailed(BatchScorerError):
    """Raised by a run (runtime/run.py) when a run started but failed; its ledger row says why.

    From ``api.run(..., check=True)`` / ``RunResults.raise_for_failures()``: ``results``
    holds every job's result of the call, the ones that succeeded too."""

    exit_code = EXIT_RUN_FAILED
    results: Any = None


class LockHeld(BatchScorerError):
    """Raised by ``storage.locks`` when another run of the job holds the job's lock.

    ``holder_run_id`` / ``holder_as_of`` name the holder's run when the ledger
    knows it (None while the holder is just starting)."""

    exit_code = EXIT_LOCKED

    def __init__(self, message: str, holder_run_id: int | None = None, holder_as_of: date | None = None) -> None:
        super().__init__(message)
        self.holder_run_id = holder_run_id
        self.holder_as_of = holder_as_of


class LockLost(RunFailed):
    """Raised when a run finds, at publish, that it no longer holds its job's lock
    (its lock session ended). Nothing was published; the run is retried whole,
    like any lost connection."""

    transient = True


class Interrupted(KeyboardInterrupt):
    """Raised in a run when the process receives SIGTERM or SIGINT (see
    :mod:`batch_scorer.runtime.signals`): the run rolls back and is recorded failed."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signame = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.signame}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
