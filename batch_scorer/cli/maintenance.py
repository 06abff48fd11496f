"""The maintenance command: prune."""

from __future__ import annotations

import click

from batch_scorer import api
from batch_scorer.cli.app import cli, config_of, table


@cli.command()
@click.argument("jobs", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Show what would be deleted (rows per job and table); delete nothing.")
@click.pass_context
def prune(ctx: click.Context, jobs: tuple[str, ...], dry_run: bool) -> None:
    """Delete what the config's retention: rules no longer keep (JOBS, default every job
    in the ledger): old predictions (never a row a _latest view shows), rejected rows,
    ledger rows and their monitoring rows.

    Each batch is its own short transaction; readers are never blocked. Run it
    from cron after the nightly runs (docs/table-growth.md).

    \b
    Example:
        batch-scorer prune --dry-run
        batch-scorer prune churn
    """
    report = api.prune(config_of(ctx), jobs, dry_run=dry_run)
    click.echo(report.describe_rules())
    if report.deleted:
        header = ("job", "table", "would delete" if dry_run else "deleted")
        table(header, [(p.job, p.table, f"{p.rows:,}") for p in report.deleted])
    if dry_run:
        click.echo(f"prune --dry-run: would delete {report.rows:,} row(s); nothing was deleted")
    else:
        click.echo(f"prune: deleted {report.rows:,} row(s)")
