"""Commands that score and read the ledger: run, runs, retract, backfill."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import click

from batch_scorer import api
from batch_scorer.cli.app import cli, config_of, print_results, progress_seconds, table
from batch_scorer.runtime.progress import row_progress
from batch_scorer.runtime.signals import interruptible


@cli.command()
@click.argument("jobs", nargs=-1)
@click.option("--all", "all_jobs", is_flag=True, help="Run every job in the config.")
@click.option("--as-of", help="Date to score, YYYY-MM-DD (default: each job's as_of rule, today in `timezone`).")
@click.option(
    "--trigger",
    type=click.Choice(["manual", "cron"]),
    default="manual",
    show_default=True,
    help="Recorded on the run; use cron in crontab lines.",
)
@click.option("--parallel", type=click.IntRange(1, 64), default=None,
              help="Jobs at most at once (default: defaults.parallel_jobs).")
@click.option("--allow-future", is_flag=True, help="Allow an as_of later than today (plus defaults.future_days).")
@click.pass_context
def run(ctx: click.Context, jobs: tuple[str, ...], all_jobs: bool, as_of: str | None, trigger: str,
        parallel: int | None, allow_future: bool) -> None:
    """Score JOBS (or --all) for one as_of and publish the predictions.

    A matrix job's name runs every expansion (churn runs churn.DE, churn.FR...).

    \b
    Example:
        batch-scorer run churn --as-of 2026-03-31
        batch-scorer run --all --trigger cron
    """
    # SIGTERM (cron, systemd, kill) and Ctrl-C roll the runs back and mark them failed.
    with interruptible(), row_progress(progress_seconds(ctx)) as progress:
        results = api.run(config_of(ctx), jobs, all_jobs=all_jobs, as_of=as_of, trigger=trigger,
                          parallel=parallel, allow_future=allow_future, on_progress=progress)
    print_results(results)
    ctx.exit(results.exit_code)


@cli.command()
@click.option("--job", help="Only this job's runs (a matrix job: all its expansions).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--status", "statuses", multiple=True, help="Only runs with this status (repeatable).")
@click.option("--since", help="Only runs started on or after this date (YYYY-MM-DD, in `timezone`).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, every ledger column.")
@click.pass_context
def runs(ctx: click.Context, job: str | None, limit: int, statuses: tuple[str, ...], since: str | None,
         as_json: bool) -> None:
    """List recent runs from the scoring_runs ledger, newest first.

    rows read / scored / published: published is what the run made visible (a
    succeeded run's rows until a later run of its as_of replaces them; else 0),
    counted when it ran: a later prune of old as_ofs does not change it. A matrix
    name lists its expansions' runs, those of values since taken out of the
    matrix too."""
    records = api.runs(config_of(ctx), job, limit, status=statuses, since=since)
    if as_json:
        for r in records:
            click.echo(json.dumps({**dataclasses.asdict(r), "rows_published": r.rows_published}, default=str))
        return
    if not records:
        filtered = job is not None or statuses or since is not None
        click.echo("no runs match these filters" if filtered else "no runs recorded yet")
        return
    header = ("run_id", "job", "as_of", "model", "trigger", "status", "read", "scored", "published",
              "rejected", "drift", "started (UTC)", "seconds")
    rows = [(str(r.run_id), r.job, str(r.as_of), r.model_version or "-", r.trigger, r.status,
             f"{r.rows_read:,}", f"{r.rows_scored:,}", f"{r.rows_published:,}", f"{r.rows_rejected:,}",
             r.drift_status or "", f"{r.started_at:%Y-%m-%d %H:%M:%S}",
             f"{r.seconds:.1f}" if r.seconds is not None else "") for r in records]
    table(header, rows)
    failed = [r for r in records if r.error and r.status not in ("succeeded",)]
    for r in failed[:5]:
        click.echo(f"run {r.run_id} ({r.status}): {r.error}")


@cli.command()
@click.argument("run_id", type=int)
@click.option("--note", help="Why (recorded on the ledger row).")
@click.pass_context
def retract(ctx: click.Context, run_id: int, note: str | None) -> None:
    """Remove a published run's rows in one transaction and mark it retracted.

    The _latest views then show what was there before (e.g. after a typo in
    --as-of scored a date in the future).

    \b
    Example:
        batch-scorer retract 42 --note "as_of typo"
    """
    done = api.retract(config_of(ctx), run_id, note)
    click.echo(f"run {done.run_id} (job {done.job}, as_of {done.as_of}): retracted, {done.rows:,} rows removed "
               f"from {done.output_table}" + (f", {done.shadow_rows:,} shadow rows" if done.shadow_rows else "")
               + (f" and its {done.metric_rows:,} model_metrics rows of that as_of deleted" if done.metric_rows
                  else ""))


@cli.command()
@click.argument("jobs", nargs=-1)
@click.option("--all", "all_jobs", is_flag=True, help="Backfill every job in the config.")
@click.option("--start", required=True, help="First as_of (YYYY-MM-DD), inclusive.")
@click.option("--end", required=True, help="Last as_of (YYYY-MM-DD), inclusive.")
@click.option("--rerun", is_flag=True, help="Score dates already published by this model again.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first failed date.")
@click.option("--allow-future", is_flag=True, help="Allow dates later than today (plus defaults.future_days).")
@click.option("--parallel", type=click.IntRange(1, 64), default=None, help="Jobs at most at once per date.")
@click.option("--version", "version", type=click.IntRange(min=1), default=None,
              help="Score with this registry version (default: the job's alias, resolved once at the start).")
@click.pass_context
def backfill(ctx: click.Context, jobs: tuple[str, ...], all_jobs: bool, start: str, end: str, rerun: bool,
             fail_fast: bool, allow_future: bool, parallel: int | None, version: int | None) -> None:
    """Score JOBS (a matrix job: every expansion; or --all) for every as_of from --start
    to --end, each date committed on its own; on each date a job runs after the jobs
    of the backfill it depends on (after:).

    Dates whose published predictions were made by the same model version are
    skipped unless --rerun. Stopped at any point, the same command finishes what
    is left. Exit code: 0 all dates done, 1 a date failed, 2 bad input, 3 dates
    were skipped because another run held the job's lock.

    A registry model's alias (model.alias) is resolved once, at the start, for
    the whole range; --version N scores every date with version N instead.

    \b
    Example:
        batch-scorer backfill churn --start 2026-01-01 --end 2026-01-31
        batch-scorer backfill churn --start 2026-01-01 --end 2026-01-31 --version 3
        batch-scorer backfill segments churn --start 2026-01-01 --end 2026-01-31
    """
    from batch_scorer.dates import to_date
    from batch_scorer.runtime.backfill import date_range
    from batch_scorer.runtime.progress import date_progress

    tz = api.as_config(config_of(ctx)).timezone
    days = date_range(to_date(start, tz, "--start"), to_date(end, tz, "--end"), ("--start", "--end"))
    with interruptible(), date_progress(len(days), progress_seconds(ctx)) as (on_date, on_rows):
        results = api.backfill(config_of(ctx), jobs, start, end, all_jobs=all_jobs, rerun=rerun,
                               fail_fast=fail_fast, allow_future=allow_future, parallel=parallel, on_date=on_date,
                               on_progress=on_rows, version=version)
    _print_backfill(", ".join(jobs) or "--all", results)
    ctx.exit(results.exit_code)


def _print_backfill(job: str, results: Any) -> None:
    several = len({r.job for r in results}) > 1
    rows = [
        ((r.job,) if several else ()) + (
            str(r.as_of), "skipped (done)" if r.status == "already_done" else str(r.status),
            f"{r.rows_published:,}", f"{r.seconds:.1f}", str(r.run_id or ""))
        for r in results
    ]
    if rows:
        table((("job",) if several else ()) + ("as_of", "status", "rows", "seconds", "run_id"), rows)
    c = results.counts()
    what = "job-date(s)" if several else "date(s)"
    click.echo(
        f"backfill {job}: {len(results) + c['not_attempted']} {what}: {c['succeeded']} succeeded, "
        f"{c['already_done']} skipped (already succeeded), {c['failed']} failed, "
        f"{c['locked']} skipped (another run held the lock), {c['not_attempted']} not attempted"
    )
    for r in results:
        if not r.ok:
            where = f"{r.job} as_of {r.as_of}" if several else f"as_of {r.as_of}"
            click.echo(f"Error: {where}: {r.error}", err=True)


