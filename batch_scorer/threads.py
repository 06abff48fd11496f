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
from collections.abc import Iterator

log = logging.getLogger(__name__)

ENV = "BATCH_SCORER_MODEL_THREADS"


def model_threads() -> int:
    """Threads for the model's native code during a run."""
    value = os.environ.get(ENV, "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            log.warning("%s=%r is not a whole number; ignoring it", ENV, value)
    return max(1, (os.cpu_count() or 1) - 2)


@contextlib.contextmanager
def limit_model_threads() -> Iterator[int]:
    """Cap OpenMP/BLAS thread pools for the duration of a run; yields the cap."""
    from threadpoolctl import threadpool_limits

    limit = model_threads()
    with threadpool_limits(limits=limit):
        yield limit
