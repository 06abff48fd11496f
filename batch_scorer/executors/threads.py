"""How many threads a model may use while a run scores (issue 4).

scikit-learn's native code (OpenMP in tree ensembles, OpenBLAS in linear
models) starts one thread per core. A run already keeps the cores busy: on
PostgreSQL a reader thread, a writer thread and two server processes work
while the model scores. Spinning OpenMP/BLAS threads then fight them, and on
a contended 2-core machine a HistGradientBoosting predict measured 5x slower
with 2 threads than with 1. So a run gives the model all cores but two (at
least one); ``BATCH_SCORER_MODEL_THREADS`` overrides that.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from batch_scorer.models.loader import LoadedModel
from batch_scorer.models.scoring import score_prepared

log = logging.getLogger(__name__)

ENV = "BATCH_SCORER_MODEL_THREADS"
SCORING_ENV = "BATCH_SCORER_SCORING_THREADS"
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def model_threads() -> int:
    """Threads for the model's native code during a run."""
    return _count_from_env(ENV, default=max(1, (os.cpu_count() or 1) - 2))


def _count_from_env(name: str, default: int) -> int:
    """A thread count from the environment (at least 1), else ``default``."""
    value = os.environ.get(name, "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            log.warning("%s=%r is not a whole number; ignoring it", name, value)
    return default


@contextlib.contextmanager
def limit_model_threads() -> Iterator[int]:
    """Cap OpenMP/BLAS thread pools for the duration of a run; yields the cap."""
    from threadpoolctl import threadpool_limits

    limit = model_threads()
    with threadpool_limits(limits=limit):
        yield limit


def scoring_workers() -> int:
    """Parts of a chunk scored at once: 2 on a machine with 2 cores or more, else 1.

    Predicting mostly releases the GIL (tree ensembles, BLAS), so one part
    predicts while the other's Python-side preprocessing runs: the heavy
    benchmark model scored 1.3x faster, at the memory of one chunk.
    ``BATCH_SCORER_SCORING_THREADS`` overrides.
    """
    return _count_from_env(SCORING_ENV, default=2 if (os.cpu_count() or 1) >= 2 else 1)


def scoring_pool() -> ThreadPoolExecutor:
    """The process's scoring threads, made on first use, each with the model thread cap
    (OpenMP's thread count is per calling thread, so it is set in each worker)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            limit = model_threads()

            def cap_threads() -> None:
                from threadpoolctl import threadpool_limits

                threadpool_limits(limits=limit)

            _pool = ThreadPoolExecutor(scoring_workers(), thread_name_prefix="bs-score", initializer=cap_threads)
        return _pool


# Chunks smaller than this are scored on the calling thread (bisection probes,
# small tables): splitting them costs more than it saves.
PARALLEL_MIN_ROWS = 4_000


def score_in_parts(model: LoadedModel, X: pd.DataFrame | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`batch_scorer.models.scoring.score_prepared`, a large chunk split across
    the scoring threads (:func:`scoring_pool`). Rows are scored independently, so
    the result is the same as one call."""
    n = X.shape[0]
    workers = scoring_workers()
    if workers < 2 or n < PARALLEL_MIN_ROWS:
        return score_prepared(model, X)
    take = X.iloc if isinstance(X, pd.DataFrame) else X
    step = -(-n // workers)
    parts = list(scoring_pool().map(lambda i: score_prepared(model, take[i : i + step]), range(0, n, step)))
    prediction = np.concatenate([p for p, _ in parts])
    scores = [s for _, s in parts]
    return prediction, None if scores[0] is None else np.concatenate(scores)  # type: ignore[arg-type]
