"""The scheduler command: the daemon, and the next fire times."""

from __future__ import annotations

from datetime import datetime

import click

from batch_scorer import api
from batch_scorer.cli.app import cli, config_of, every_job, named_or_all


def _parse_datetime(_ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a date-time; use e.g. 2026-03-28T12:00 (read in `timezone`)", param=param
        ) from None


@cli.command()
@click.argument("jobs", nargs=-1)
@every_job
@click.option("--next", "count", type=click.IntRange(1, 1000), default=None,
              help="Print each job's next N fire times and as_of values; run nothing.")
@click.option("--after", callback=_parse_datetime,
              help="With --next: list fires after this time (default now; naive = in `timezone`).")
@click.pass_context
def schedule(ctx: click.Context, jobs: tuple[str, ...], all_jobs: bool, count: int | None,
             after: datetime | None) -> None:
    """Run the scheduler daemon: every job with a schedule: (or JOBS) on its cron.

    Runs until SIGTERM or Ctrl-C (then exits 0 after the current run finishes
    or, after scheduler.stop_timeout_seconds, is rolled back). On start, each
    job's latest fire within scheduler.catch_up_hours runs once if the ledger
    has no succeeded run for it.

    \b
    Example:
        batch-scorer schedule --next 5    # show what would run when
        batch-scorer schedule             # the daemon (systemd: docs/operations.md)
    """
    jobs = named_or_all(jobs, all_jobs)
    if after is not None and count is None:
        raise click.UsageError("--after only applies with --next N")
    if count is not None:
        fires = api.next_fires(config_of(ctx), count, after=after, jobs=jobs)
        width = max(len(f.job) for f in fires)
        click.echo(f"{'job'.ljust(width)}  {'fire time'.ljust(25)}  as_of")
        for f in fires:
            click.echo(f"{f.job.ljust(width)}  {f.fire_time.isoformat().ljust(25)}  {f.as_of}")
        return
    ctx.exit(api.schedule(config_of(ctx), jobs))


