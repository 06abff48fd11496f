"""Monitoring commands: evaluate (realized performance), report (the HTML file)."""

from __future__ import annotations

import click

from batch_scorer import api
from batch_scorer.cli.app import cli, config_of, table


@cli.command()
@click.argument("jobs", nargs=-1)
@click.pass_context
def evaluate(ctx: click.Context, jobs: tuple[str, ...]) -> None:
    """Join JOBS' labels (default: every job with labels:) to their published predictions
    and store each model's metrics per as_of in model_metrics.

    The champion is read from the output table, challengers from <output>_shadow.
    Running it again after more labels arrived replaces the job's figures for the
    as_ofs that now have labels.

    \b
    Example:
        batch-scorer evaluate churn
    """
    done = api.evaluate(config_of(ctx), jobs, check=False)
    rows = [(e.job, str(r["as_of"]), r["model_version"], r["role"] + (f" {r['challenger']}" if r["challenger"] else ""),
             r["metric"], f"{r['value']:.4f}", f"{r['rows']:,}") for e in done for r in e.rows]
    if rows:
        table(("job", "as_of", "model", "role", "metric", "value", "rows"), rows)
    for e in done:
        if e.error is not None:
            click.echo(f"{e.job}: not evaluated, nothing stored for it (see the error below)")
            continue
        waiting = f"; {len(e.unlabelled)} as_of(s) without labels yet" if e.unlabelled else ""
        click.echo(f"{e.job}: {len(e.evaluated)} as_of(s) evaluated, {len(e.rows)} figure(s) stored{waiting}")
        for note in e.notes:
            click.echo(f"  note: {note}")
    for e in done:
        if e.error is not None:
            click.echo(f"Error: {e.error}", err=True)
    ctx.exit(max((e.exit_code for e in done), default=0))


@cli.command()
@click.argument("jobs", nargs=-1)
@click.option("--out", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              help="The HTML file to write (replaced whole).")
@click.pass_context
def report(ctx: click.Context, jobs: tuple[str, ...], out: str) -> None:
    """Write one self-contained HTML report of JOBS (default: every job): runs over time,
    the score against the reference, PSI per feature, metrics per model version.

    It refers to nothing outside itself (no script, no link): open it offline, mail it,
    put it on a file share. Needs matplotlib: pip install 'batch-scorer[report]'.

    \b
    Example:
        batch-scorer report --out /var/www/monitoring/index.html
    """
    written = api.report(config_of(ctx), jobs, out=out)
    click.echo(f"wrote {written.path} ({written.jobs} job(s), {written.bytes / 1024:,.0f} KB)")
