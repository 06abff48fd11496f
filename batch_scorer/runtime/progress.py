"""Progress for long work: a bar on a terminal, periodic log lines elsewhere."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

# Plain log lines every N seconds off a terminal; tests set a small value.
LOG_EVERY_SECONDS = float(os.environ.get("BATCH_SCORER_PROGRESS_SECONDS", "10"))


@contextlib.contextmanager
def row_progress(label: str, interactive: bool | None = None) -> Iterator[Callable[[int], None]]:
    """Yield a callback taking the rows done so far.

    On a terminal it drives a rich progress bar (rows, rows/s); otherwise (cron,
    CI, a pipe) it logs one line every ``LOG_EVERY_SECONDS``.
    """
    if interactive is None:
        interactive = sys.stderr.isatty()
    if interactive:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            TextColumn("{task.completed:,.0f} rows"),
            TextColumn("{task.fields[rate]:,.0f} rows/s"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, transient=True) as bar:
            task = bar.add_task(label, total=None, rate=0.0)
            start = time.monotonic()

            def update(rows: int) -> None:
                elapsed = max(time.monotonic() - start, 1e-9)
                bar.update(task, completed=rows, rate=rows / elapsed)

            yield update
        return
    start = last = time.monotonic()

    def log_update(rows: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= LOG_EVERY_SECONDS:
            last = now
            log.info("%s: %d rows, %.0f rows/s", label, rows, rows / max(now - start, 1e-9))

    yield log_update
