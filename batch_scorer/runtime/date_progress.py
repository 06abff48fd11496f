"""Progress of a backfill: a bar over dates and one over the current date's rows.

On a terminal both are rich bars; elsewhere (cron, CI, a pipe) the backfill's
own per-date log lines and :func:`batch_scorer.progress.row_progress`'s
periodic row lines are the progress.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

from batch_scorer.runtime.progress import row_progress

DateFn = Callable[[date, Any], None]
RowsFn = Callable[[int], None]


@contextlib.contextmanager
def date_progress(total: int, interactive: bool | None = None) -> Iterator[tuple[DateFn, RowsFn]]:
    """Yield ``(on_date, on_rows)`` callbacks for :func:`batch_scorer.api.backfill`.

    ``on_date(as_of, None)`` starts a date, ``on_date(as_of, result)`` ends it;
    ``on_rows(n)`` reports rows read so far in the current date's run.
    """
    if interactive is None:
        interactive = sys.stderr.isatty()
    if not interactive:
        with row_progress("scoring") as on_rows:
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

        def on_rows(n: int) -> None:
            rate = n / max(time.monotonic() - started, 1e-9)
            bar.update(rows, completed=n, detail=f"{n:,} rows, {rate:,.0f} rows/s")

        yield on_date, on_rows
