"""The ``batch-scorer`` click group, its global options and what commands share.

Commands live in modules by what they are for (runs, setup, schedule, ...) and
register themselves on :data:`cli`; :mod:`batch_scorer.cli.main` imports them all
and is the entry point.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import click

from batch_scorer import api
from batch_scorer.config import default_config_path
from batch_scorer.errors import BatchScorerError
from batch_scorer.masking import mask_text
from batch_scorer.runtime.outcome import RunResult

CONTEXT = {"help_option_names": ["-h", "--help"]}


class _MaskingFilter(logging.Filter):
    """Last line of defence: no password in any log line, whatever the caller logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_text(record.getMessage())
        record.args = None
        return True


class _NoiseFilter(logging.Filter):
    """psycopg's "error ignored terminating <psycopg.Copy ...>: the connection is lost" follows
    a lost connection that the run reports itself (its ledger row, its Error line): noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("psycopg") and record.getMessage().startswith("error ignored terminating"))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is logged (not the one at set-up),
    so an in-process caller that swaps stderr (a test runner) never gets a closed stream."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr


# Libraries whose own log lines would otherwise reach cron mail raw, through
# Python's last-resort handler (no time, no level): they go through the same
# formatted, masking handler, warnings and errors only.
THIRD_PARTY_LOGGERS = ("psycopg", "psycopg2", "sqlalchemy", "apscheduler", "distributed", "adbc_driver_manager")


def _handler(verbose: int) -> logging.Handler:
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if verbose < 2:
        handler.addFilter(_NoiseFilter())
    handler.addFilter(_MaskingFilter())
    return handler


def _setup_logging(verbose: int, quiet: bool) -> None:
    """One handler for every line: time, level, logger, message (which names the job and
    run); passwords masked. The package logs at INFO (-q WARNING, -vv DEBUG), libraries
    at WARNING; psycopg's "error ignored terminating" noise only with -vv."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    root = logging.getLogger("batch_scorer")
    root.handlers[:] = [_handler(verbose)]
    root.setLevel(level)
    root.propagate = False
    if verbose < 1:
        logging.getLogger("batch_scorer.storage.ledger").setLevel(max(level, logging.WARNING))
    for name in THIRD_PARTY_LOGGERS:
        library = logging.getLogger(name)
        # A handler of its own: Dask sets the level of its loggers' handlers
        # (LocalCluster's silence_logs), which must not silence the package's lines.
        library.handlers[:] = [_handler(verbose)]
        library.setLevel(logging.WARNING)
        library.propagate = False  # printed once, here, not again by a root handler


@click.group(context_settings=CONTEXT)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file (default: $BATCH_SCORER_CONFIG, else ./config.yaml).",
)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("-v", "--verbose", count=True, help="More log lines (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(package_name="batch-scorer")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool, verbose: int, quiet: bool) -> None:
    """Score scikit-learn models into database tables, safely and fast.

    \b
    Example:
        batch-scorer demo                 # SQLite demo, no server needed
        batch-scorer run churn            # one job, as_of today
        batch-scorer run --all            # every job (cron)
    """
    _setup_logging(verbose, quiet)
    ctx.obj = {"config": config_path or str(default_config_path()), "debug": debug}


def config_of(ctx: click.Context) -> str:
    return str(ctx.obj["config"])


# ``--all`` on commands that act on every job when none is named (validate, jobs, schedule).
every_job = click.option("--all", "all_jobs", is_flag=True, help="Every job in the config (as naming none).")


def named_or_all(names: tuple[str, ...], all_jobs: bool) -> tuple[str, ...]:
    """The job names of a command with :data:`every_job` (empty: every job)."""
    if names and all_jobs:
        raise click.UsageError(f"give job names or --all, not both (names given: {', '.join(names)})")
    return names


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for row in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def print_results(results: Sequence[RunResult]) -> None:
    """One line for one job, else one summary table (job, status, rows, seconds, run_id);
    then each failure once."""
    if len(results) == 1 and results[0].ok:
        r = results[0]
        click.echo(f"{r.job}: {r.status}  run {r.run_id}  as_of {r.as_of}  model {r.model_version}  "
                   f"{r.rows_scored:,} rows scored, {r.rows_rejected:,} rejected, {r.seconds:.1f}s -> {r.output_table}")
    elif results:
        _summary(results)
    failed: dict[str, list[str]] = {}  # the same error of many jobs (no tool tables yet) once
    for r in results:
        if not r.ok:
            failed.setdefault(str(r.error), []).append(r.job)
    for error, jobs in failed.items():
        if len(jobs) == 1:
            click.echo(f"Error: {error}", err=True)
        else:
            named = ", ".join(jobs[:5]) + (f" and {len(jobs) - 5} more" if len(jobs) > 5 else "")
            click.echo(f"Error ({len(jobs)} jobs: {named}): {error}", err=True)


def _summary(results: Sequence[RunResult]) -> None:
    # rows: what the run published; a run that did not succeed published none, whatever it
    # had scored before it stopped (the ledger keeps that count: `batch-scorer runs`).
    rows = [(r.job, str(r.as_of or ""), r.status.value if hasattr(r.status, "value") else str(r.status),
             f"{r.rows_published:,}", f"{r.rows_rejected:,}", f"{r.seconds:.1f}", str(r.run_id or ""),
             r.output_table or "") for r in results]
    table(("job", "as_of", "status", "rows", "rejected", "seconds", "run_id", "output"), rows)


def progress_seconds(ctx: click.Context) -> float:
    try:
        cfg = api.as_config(config_of(ctx))
    except BatchScorerError:
        return 10.0
    return cfg.runtime.progress_seconds


