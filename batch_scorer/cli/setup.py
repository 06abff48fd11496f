"""Commands that set up and check: init-db, validate, demo."""

from __future__ import annotations

import click

from batch_scorer import api
from batch_scorer.cli.app import cli, config_of, every_job, named_or_all, print_results
from batch_scorer.runtime.outcome import exit_code


@cli.command("init-db")
@click.pass_context
def init_db(ctx: click.Context) -> None:
    """Create the tool's tables, output tables and views (idempotent).

    Exits non-zero when a job's output table could not be created or checked."""
    report = api.init_db(config_of(ctx))
    for line in report.lines:
        click.echo(line)
    ctx.exit(report.exit_code)


@cli.command()
@click.argument("jobs", nargs=-1)
@every_job
@click.pass_context
def validate(ctx: click.Context, jobs: tuple[str, ...], all_jobs: bool) -> None:
    """Check config, database, models, sources and output tables of JOBS (default, or
    --all: every job); write nothing."""
    checks = api.validate(config_of(ctx), named_or_all(jobs, all_jobs))
    for check in checks:
        if check.ok:
            click.echo(f"{check.job}: ok - {check.message}")
        else:
            click.echo(f"{check.job}: FAILED", err=True)
            click.echo(f"Error: {check.message}", err=True)
    if not checks:
        click.echo("config ok, database reachable; no jobs defined")
    ctx.exit(max((c.exit_code for c in checks if not c.ok), default=0) or (0 if all(c.ok for c in checks) else 2))


@cli.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Build a demo feature table and models, score them, and show the result."""
    from batch_scorer.demo import run_demo

    result = run_demo(config_of(ctx))
    first, last = result.days
    click.echo(f"Demo database: {result.database} ({result.feature_rows:,} feature rows, one snapshot a day "
               f"from {first} to {last})")
    print_results(result.results)
    if not result.sample.empty:
        click.echo("\nHighest value at risk (from the retention_priority_latest view):")
        click.echo(result.sample.to_string(index=False))
    shell = "sqlite3" if "://" not in result.database else "psql"
    click.echo(f"\nLook at the result yourself, e.g. with the {shell} shell:")
    click.echo(f"  {shell} {result.database.replace('postgresql+psycopg', 'postgresql')}")
    for q in result.queries:
        click.echo(f"  {q}")
    click.echo("Or try: batch-scorer runs | batch-scorer jobs --graph | batch-scorer run churn.DE")
    click.echo(f"        batch-scorer backfill churn --start {first} --end {last}")
    ctx.exit(exit_code(result.results))


