"""What a configuration reload (SIGHUP to the daemon) changes, in one log line.

The daemon re-reads and validates its config file; on success it swaps in the
new jobs and schedules (a run in progress finishes with the old
configuration). Database settings the open engine was built with
(:data:`RESTART_KEYS`) need a restart: they are logged and the old values kept. So
does a ``defaults.parallel_jobs`` above the one the daemon started with: its engine's
connection pool is sized for that many jobs at once (a lower value applies at once).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from batch_scorer.config import Config

# Read once, when the daemon opens its database engine.
RESTART_KEYS = ("url", "busy_timeout_seconds")


@dataclass(frozen=True)
class ConfigChanges:
    """Scheduled jobs added, removed and rescheduled; jobs with other changes; restart-only keys."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    rescheduled: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()  # e.g. database.url changed: ignored until a restart
    other: tuple[str, ...] = ()  # other top-level sections that changed (scheduler, defaults, ...)

    def summary(self) -> str:
        """The changes as one line, e.g. ``jobs added: b; rescheduled: a``."""
        parts = [f"{what}: {', '.join(names)}" for what, names in (
            ("jobs added", self.added), ("jobs removed", self.removed),
            ("jobs rescheduled", self.rescheduled), ("other job settings changed", self.changed),
            ("sections changed", self.other),
        ) if names]
        if self.restart:
            keys = ", ".join(self.restart)
            parts.append(f"{keys} changed: that needs a restart of the daemon; still using the old value")
        return "; ".join(parts) or "no changes"


def config_changes(old: Config, new: Config, old_jobs: Iterable[str], new_jobs: Iterable[str]) -> ConfigChanges:
    """Compare two configurations; ``*_jobs`` are the scheduled jobs the daemon runs in each."""
    before, after = set(old_jobs), set(new_jobs)
    both = sorted(before & after)
    rescheduled = tuple(
        n for n in both
        if old.jobs[n].schedule != new.jobs[n].schedule or old.timezone != new.timezone
    )
    changed = tuple(n for n in both if n not in rescheduled and old.jobs[n] != new.jobs[n])
    restart = tuple(f"database.{k}" for k in RESTART_KEYS if getattr(old.database, k) != getattr(new.database, k))
    if new.defaults.parallel_jobs > old.defaults.parallel_jobs:
        restart += ("defaults.parallel_jobs (raised)",)
    other = tuple(
        key for key in ("timezone", "scheduler", "defaults")
        if getattr(old, key) != getattr(new, key)
    )
    return ConfigChanges(
        added=tuple(sorted(after - before)), removed=tuple(sorted(before - after)),
        rescheduled=rescheduled, changed=changed, restart=restart, other=other,
    )


def keep_restart_settings(old: Config, new: Config) -> Config:
    """``new`` with the settings that need a restart taken from ``old`` (module doc)."""
    kept = {k: getattr(old.database, k) for k in RESTART_KEYS}
    update: dict[str, object] = {"database": new.database.model_copy(update=kept)}
    if new.defaults.parallel_jobs > old.defaults.parallel_jobs:
        update["defaults"] = new.defaults.model_copy(update={"parallel_jobs": old.defaults.parallel_jobs})
    return new.model_copy(update=update)
