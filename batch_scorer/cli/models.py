"""``batch-scorer models ...``: the model registry (register, list, promote, rollback,
history, export)."""

from __future__ import annotations

import click

from batch_scorer import api
from batch_scorer.cli.app import cli, config_of, table
from batch_scorer.models.registry import DEFAULT_ALIAS, version_label


@cli.group()
def models() -> None:
    """The model registry: versions of named models, and aliases (champion, challenger...)
    that jobs score with (model.registry + model.alias in the config).

    \b
    Example:
        batch-scorer models register churn_DE models/churn.joblib --note "March retrain"
        batch-scorer models promote churn_DE 3
        batch-scorer models rollback churn_DE
    """


@models.command()
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--alias", help="Point this alias at the new version (checked like promote).")
@click.option("--note", help="Why (recorded with the version and the alias event).")
@click.option("--reference", help="Training data profiled as the drift reference: a table, or a .sql file.")
@click.option("--trust", "trusted", multiple=True,
              help="A type a .skops file may hold beyond skops' safe list (repeatable).")
@click.pass_context
def register(ctx: click.Context, name: str, file: str, alias: str | None, note: str | None,
             reference: str | None, trusted: tuple[str, ...]) -> None:
    """Register FILE (.joblib/.pkl or .skops) as the next version of NAME.

    The same bytes registered again give the existing version. The file is
    loaded (a pickle runs code: register only files you trust) to learn its
    columns and kind; a .skops file may hold only types skops trusts, those the
    jobs using NAME list in model.trusted_types, and --trust ones.
    """
    done = api.register_model(config_of(ctx), name, file, reference=reference, alias=alias, note=note,
                              trusted_types=trusted)
    v = done.version
    what = "registered" if done.created else "already registered (same bytes)"
    click.echo(f"{name} {v.label}: {what}, sha256 {v.sha256}, {v.estimator_class} ({v.kind}), "
               f"{len(v.features)} features")
    if done.event is not None:
        click.echo(f"{name}: alias {done.event.alias} -> {v.label}")


@models.command("list")
@click.argument("name", required=False)
@click.pass_context
def list_(ctx: click.Context, name: str | None) -> None:
    """List registered versions (of NAME) with their aliases."""
    versions = api.list_models(config_of(ctx), name)
    if not versions:
        click.echo(f"no versions of {name!r} registered" if name else "no models registered yet")
        return
    rows = [(v.name, v.label, ", ".join(v.aliases), v.kind, v.estimator_class.rsplit(".", 1)[-1], v.format,
             str(len(v.features)), v.sha256[:12], f"{v.registered_at:%Y-%m-%d %H:%M:%S}", v.registered_by,
             v.note or "") for v in versions]
    table(("name", "version", "aliases", "kind", "class", "format", "features", "sha256", "registered (UTC)",
           "by", "note"), rows)


@models.command()
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1))
@click.option("--alias", default=DEFAULT_ALIAS, show_default=True)
@click.option("--note", help="Why (recorded with the event).")
@click.pass_context
def promote(ctx: click.Context, name: str, version: int, alias: str, note: str | None) -> None:
    """Point ALIAS of NAME at VERSION, after checking it against every job using NAME.

    Refused (exit 2, naming the job and the column) when the version does not
    fit a job: its feature columns against the job's source, the score, the
    kind of the job's output table.
    """
    move = api.promote_model(config_of(ctx), name, version, alias=alias, note=note)
    before = version_label(move.from_version) if move.from_version is not None else "(unset)"
    click.echo(f"{name}: alias {alias} {before} -> {version_label(move.to_version)}")


@models.command()
@click.argument("name")
@click.option("--alias", default=DEFAULT_ALIAS, show_default=True)
@click.option("--note", help="Why (recorded with the event).")
@click.pass_context
def rollback(ctx: click.Context, name: str, alias: str, note: str | None) -> None:
    """Move ALIAS of NAME back to the version it held before its latest change."""
    move = api.rollback_model(config_of(ctx), name, alias=alias, note=note)
    before = version_label(move.from_version) if move.from_version is not None else "(unset)"
    click.echo(f"{name}: alias {alias} {before} -> {version_label(move.to_version)} (rolled back)")


@models.command()
@click.argument("name")
@click.pass_context
def history(ctx: click.Context, name: str) -> None:
    """Every alias change of NAME, oldest first: when, who, from, to, why."""
    events = api.model_history(config_of(ctx), name)
    if not events:
        click.echo(f"no alias events for {name!r}")
        return
    rows = [(str(e.id), f"{e.at:%Y-%m-%d %H:%M:%S}", e.alias, e.action,
             version_label(e.from_version) if e.from_version is not None else "-", version_label(e.to_version),
             e.by, e.note or "") for e in events]
    table(("event", "at (UTC)", "alias", "action", "from", "to", "by", "note"), rows)


@models.command()
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1))
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_context
def export(ctx: click.Context, name: str, version: int, file: str) -> None:
    """Write VERSION of NAME to FILE, exactly the registered bytes (sha256-checked)."""
    v = api.export_model(config_of(ctx), name, version, file)
    click.echo(f"{name} {v.label}: wrote {file} ({v.format}, sha256 {v.sha256})")
