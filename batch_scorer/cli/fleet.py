"""``batch-scorer jobs``: the expanded jobs as a table, or their map with ``--graph``."""

from __future__ import annotations

import click

from batch_scorer import api
from batch_scorer.cli.app import cli, config_of, every_job, named_or_all, table


@cli.command()
@click.argument("names", nargs=-1)
@every_job
@click.option("--graph", is_flag=True, help="Print which job reads and writes which table (Mermaid text).")
@click.pass_context
def jobs(ctx: click.Context, names: tuple[str, ...], all_jobs: bool, graph: bool) -> None:
    """List the expanded jobs (model, source, output, schedule, after); no database needed.

    \b
    Example:
        batch-scorer jobs churn          # every expansion of the churn matrix
        batch-scorer jobs --graph > fleet.mmd
    """
    names = named_or_all(names, all_jobs)
    if graph:
        click.echo(api.graph(config_of(ctx), names), nl=False)
        return
    rows = [(j.job, j.model, j.source + (f" [{j.where}]" if j.where else ""), j.output, j.schedule or "",
             ", ".join(j.after)) for j in api.jobs(config_of(ctx), names)]
    if not rows:
        click.echo("no jobs defined")
        return
    table(("job", "model", "source", "output", "schedule", "after"), rows)
