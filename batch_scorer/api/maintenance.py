"""Keeping the database's size in check: ``prune`` applies the ``retention:`` rules."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from batch_scorer.api._common import ConfigLike, as_config, open_engine, select_jobs
from batch_scorer.config import Config
from batch_scorer.dates import today
from batch_scorer.errors import ConfigError
from batch_scorer.storage import prune as pruning

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneReport:
    """What ``prune`` deleted (or, with ``dry_run``, would delete): rows per job and table."""

    dry_run: bool
    rules: pruning.Retention
    deleted: list[pruning.Pruned] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.deleted)

    def rows_of(self, table: str, job: str | None = None) -> int:
        """Rows of one table (of one job, or of all)."""
        return sum(p.rows for p in self.deleted if p.table == table and job in (None, p.job))

    def describe_rules(self) -> str:
        """The rules in force, in words."""
        r = self.rules
        kept = [f"each job's last {r.keep_as_ofs} as_ofs"] if r.keep_as_ofs else []
        kept += [f"as_ofs on or after {r.keep_since}"] if r.keep_since else []
        parts = [f"predictions: {' or '.join(kept) if kept else 'all'} (and every row a _latest view shows)"]
        for what, before in (("rejected rows", r.rejected_before), ("ledger rows", r.ledger_before)):
            parts.append(f"{what}: " + (f"of runs started since {before:%Y-%m-%d %H:%M} UTC" if before else "all"))
        return "retention keeps " + "; ".join(parts)


def retention_rules(cfg: Config, now: datetime | None = None) -> pruning.Retention:
    """The config's ``retention:`` section resolved to dates (``timezone``'s today) and instants."""
    r = cfg.retention
    now = now or datetime.now(UTC)
    return pruning.Retention(
        keep_as_ofs=r.predictions_keep_as_ofs,
        keep_since=today(cfg.timezone, now) - timedelta(days=r.predictions_days) if r.predictions_days else None,
        rejected_before=now - timedelta(days=r.rejected_rows_days) if r.rejected_rows_days else None,
        ledger_before=now - timedelta(days=r.ledger_days) if r.ledger_days else None,
    )


def prune(config: ConfigLike = None, jobs: Sequence[str] = (), dry_run: bool = False) -> PruneReport:
    """Delete what the ``retention:`` rules no longer keep, for ``jobs`` (default: every job
    the ledger knows, also ones since removed from the config), in short transactions that
    never block readers; never a row a ``_latest`` view shows. ``dry_run`` counts instead
    (docs/table-growth.md)."""
    cfg = as_config(config)
    rules = retention_rules(cfg)
    report = PruneReport(dry_run, rules)
    # A small pool: prune opens a connection per batch, and batches come one after another.
    with open_engine(cfg, create=False, pool_size=2) as engine:
        known = pruning.ledger_jobs(engine)
        for name in _jobs(cfg, jobs, known):
            output = cfg.jobs[name].output.table if name in cfg.jobs else None
            done = pruning.prune_job(engine, name, rules, output=output, dry_run=dry_run)
            report.deleted.extend(done)
            for p in done:
                log.info("prune: job %s: %s %d row(s) of %s", name, "would delete" if dry_run else "deleted",
                         p.rows, p.table)
    return report


def _jobs(cfg: Config, names: Sequence[str], known: Sequence[str]) -> list[str]:
    """The jobs to prune: named ones (a matrix name: its expansions; a name only the ledger
    knows: itself), else every job in the ledger."""
    if not names:
        return list(known)
    out: list[str] = []
    for name in names:
        try:
            selected = select_jobs(cfg, [name], False)
        except ConfigError:
            if name not in known:
                raise
            selected = [name]  # a job no longer in the config, still in the ledger
        out += [n for n in selected if n not in out]
    return [n for n in out if n in known]
