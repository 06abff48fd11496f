"""Progress for long work: a bar per running job on a terminal, periodic log lines elsewhere.

Off a terminal (cron, systemd, CI, a pipe, a notebook) each running job logs one
line every ``progress_seconds``: the job, its run id, the rows read so far and
the rate since *that job's* run started. On a terminal a rich bar per job shows
the same. A notebook gets the log lines (no widgets needed), or pass your own
callback as ``on_progress`` to :func:`batch_scorer.api.run`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

log = logging.getLogger(__name__)

# (job, run_id, rows read so far, seconds since the job's run started)
ProgressFn = Callable[[str, int, int, float], None]
# A backfill's dates: (as_of, None) when a date starts, (as_of, its results) when it ends.
DateFn = Callable[[date, Any], None]


class _LogLines:
    """One log line per job every ``every`` seconds."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, job: str, run_id: int, rows: int, seconds: float) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.setdefault(f"{job}/{run_id}", now)
            if now - last < self.every:
                return
            self._last[f"{job}/{run_id}"] = now
        log.info("job %s run %d: %d rows read, %.0f rows/s", job, run_id, rows, rows / max(seconds, 1e-9))


@contextlib.contextmanager
def row_progress(
    every_seconds: float = 10.0, interactive: bool | None = None, console: Any = None
) -> Iterator[ProgressFn]:
    """Yield a progress callback (module doc) for the duration of a command
    (``console``: a rich Console to draw on; default: stderr)."""
    if interactive is None:
        interactive = sys.stderr.isatty()
    if not interactive:
        yield _LogLines(every_seconds)
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.completed:,.0f} rows"),
        TextColumn("{task.fields[rate]:,.0f} rows/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True, console=console, auto_refresh=False) as bar:
        tasks: dict[str, Any] = {}
        lock = threading.Lock()

        def update(job: str, run_id: int, rows: int, seconds: float) -> None:
            with lock:
                key = f"{job}/{run_id}"
                if key not in tasks:
                    tasks[key] = bar.add_task(f"{job} (run {run_id})", total=None, rate=0.0)
                bar.update(tasks[key], completed=rows, rate=rows / max(seconds, 1e-9))
                bar.refresh()

        yield update


@contextlib.contextmanager
def date_progress(
    total: int, every_seconds: float = 10.0, interactive: bool | None = None
) -> Iterator[tuple[DateFn, ProgressFn]]:
    """Yield ``(on_date, on_rows)`` callbacks for :func:`batch_scorer.api.backfill`: a bar
    over dates and one over the current date's rows on a terminal; elsewhere the
    backfill's own per-date log lines and :func:`row_progress`'s row lines.

    ``on_date(as_of, None)`` starts a date, ``on_date(as_of, result)`` ends it.
    """
    if interactive is None:
        interactive = sys.stderr.isatty()
    if not interactive:
        with row_progress(every_seconds, interactive=False) as on_rows:
            yield (lambda _as_of, _result: None), on_rows
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        dates = bar.add_task("dates", total=total, detail="")
        rows = bar.add_task("rows", total=None, detail="")
        started = time.monotonic()

        def on_date(as_of: date, result: Any) -> None:
            nonlocal started
            if result is None:
                started = time.monotonic()
                bar.update(dates, detail=f"as_of {as_of}")
                bar.reset(rows, total=None, detail="")
            else:
                bar.advance(dates)

        def on_rows(job: str, run_id: int, n: int, seconds: float) -> None:
            rate = n / max(seconds, 1e-9)
            bar.update(rows, completed=n, detail=f"{job} run {run_id}: {n:,} rows, {rate:,.0f} rows/s")

        yield on_date, on_rows
