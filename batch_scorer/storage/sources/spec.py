"""What a reader needs to know about a job's source: :class:`SourceSpec`.

The run's plan builds one from the configuration; readers never see the
configuration itself. Two specs with the same :meth:`SourceSpec.identity` read
the same rows for an as_of (the same table or query, filters, parameters and
time zone), whatever columns each job needs from them: a batch of jobs reads
such a source once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SourceSpec:
    """A job's source: a table (optionally filtered to one as_of day) or a query file.

    ``where`` holds equality filters and ``params`` a query's bind parameters
    (matrix values): both are always bound, never pasted into SQL. ``exact``
    columns (keys and pass-through columns) keep their exact database types;
    ``timezone`` is where the days of a timestamp ``as_of_column`` are cut.
    """

    job: str
    key: tuple[str, ...]
    table: str | None = None
    query: Path | None = None
    as_of_column: str | None = None
    where: tuple[tuple[str, Any], ...] = ()
    params: tuple[tuple[str, Any], ...] = ()
    pass_through: tuple[str, ...] = ()
    timezone: str = "UTC"
    section: str | None = "source"
    """The config section the spec comes from (``source``, ``labels``), named in advice;
    None: not from the config (a model's reference table or query, given to ``models
    register --reference`` or ``reference=``)."""
    subject: str | None = None
    """Who messages are about; None: ``job '<job>'``."""

    @property
    def who(self) -> str:
        """How messages begin: ``job 'churn'`` (or :attr:`subject`)."""
        return self.subject or f"job {self.job!r}"

    def fix(self, key: str) -> str:
        """Advice to fix one of the spec's keys: ``fix source.table in the config``."""
        if self.section:
            return f"fix {self.section}.{key} in the config"
        return "fix the name given (models register --reference, or reference= from Python)"

    @property
    def exact(self) -> tuple[str, ...]:
        """Columns written to the output as the source holds them: keys, then pass-through."""
        return tuple(dict.fromkeys([*self.key, *self.pass_through]))

    def describe(self) -> str:
        """The table name or the query file, for messages."""
        return self.table if self.table is not None else str(self.query)

    def identity(self) -> tuple[Any, ...]:
        """Equal for specs that read the same rows of any as_of (columns aside)."""
        return (self.table, str(self.query) if self.query else None, self.as_of_column,
                self.where, self.params, self.timezone)

    def merged(self, others: Sequence[SourceSpec], job: str) -> SourceSpec:
        """One spec reading every exact column any of ``others`` (same identity) needs."""
        passing = [c for s in (self, *others) for c in s.pass_through]
        return replace(self, job=job, pass_through=tuple(dict.fromkeys(passing)))
