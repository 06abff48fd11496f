"""How many threads a run's model may use, and the scoring threads a chunk is split across.

scikit-learn's native code (OpenMP in tree ensembles, OpenBLAS in linear
models) starts one thread per core. A run already keeps the cores busy: on
PostgreSQL a reader thread, a writer thread and two server processes work
while the model scores. Spinning OpenMP/BLAS threads then fight them, and on
a contended 2-core machine a HistGradientBoosting predict measured 5x slower
with 2 threads than with 1. So a run gives the model all cores but two (at
least one) unless ``runtime.model_threads`` says otherwise.

A large chunk is scored in ``runtime.scoring_threads`` parts at once: predicting
mostly releases the GIL (tree ensembles, BLAS), so one part predicts while the
other's Python-side preprocessing runs (the heavy benchmark model scored 1.3x
faster, at the memory of one chunk). Rows are scored independently, so the
result is the same as one call.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from batch_scorer.models.loader import LoadedModel
from batch_scorer.models.scoring import score_prepared

# Chunks smaller than this are scored on the calling thread (bisection probes,
# small tables): splitting them costs more than it saves.
PARALLEL_MIN_ROWS = 4_000


@dataclass(frozen=True)
class ThreadSettings:
    """The resolved thread knobs of a process (from the configuration's ``runtime:``)."""

    model_threads: int = 1
    scoring_threads: int = 1


_pools: dict[ThreadSettings, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


@contextlib.contextmanager
def limit_model_threads(settings: ThreadSettings) -> Iterator[int]:
    """Cap OpenMP/BLAS thread pools of the calling thread's libraries for a command; yields the cap.

    Set once per command (the cap is process-wide state in those libraries),
    not per run: several runs share the process."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=settings.model_threads):
        yield settings.model_threads


def scoring_pool(settings: ThreadSettings) -> ThreadPoolExecutor:
    """The process's scoring threads for these settings, made on first use, each with the
    model thread cap (OpenMP's thread count is per calling thread, so it is set in each)."""
    with _pools_lock:
        pool = _pools.get(settings)
        if pool is None:

            def cap_threads() -> None:
                from threadpoolctl import threadpool_limits

                threadpool_limits(limits=settings.model_threads)

            pool = ThreadPoolExecutor(settings.scoring_threads, thread_name_prefix="bs-score",
                                      initializer=cap_threads)
            _pools[settings] = pool
        return pool


def shutdown_pools() -> None:
    """Stop the scoring threads (a notebook kernel keeps no idle threads after a command)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.shutdown(wait=True)


def score_in_parts(
    model: LoadedModel, X: pd.DataFrame | np.ndarray, settings: ThreadSettings = ThreadSettings()
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`batch_scorer.models.scoring.score_prepared`, a large chunk split across the
    scoring threads (module doc)."""
    n = X.shape[0]
    workers = settings.scoring_threads
    if workers < 2 or n < PARALLEL_MIN_ROWS:
        return score_prepared(model, X)
    take = X.iloc if isinstance(X, pd.DataFrame) else X
    step = -(-n // workers)
    parts = list(scoring_pool(settings).map(lambda i: score_prepared(model, take[i : i + step]), range(0, n, step)))
    prediction = np.concatenate([p for p, _ in parts])
    scores = [s for _, s in parts]
    return prediction, None if scores[0] is None else np.concatenate(scores)  # type: ignore[arg-type]


def scorer(settings: ThreadSettings):  # type: ignore[no-untyped-def]
    """``score_in_parts`` bound to ``settings`` (what the executor hands the checks)."""
    return functools.partial(score_in_parts, settings=settings)
