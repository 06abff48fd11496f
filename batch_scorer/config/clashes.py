"""Table-name rules across jobs, checked at load (today's run-time surprises, refused early).

An output table may not be a table a job reads, one of the tool's own tables,
or a name the tool derives from an output table (``X_latest``, ``X_daily``,
``X_shadow``). Names are compared case-insensitively, because SQLite folds
case, so ``Predictions`` and ``predictions`` are one table there. Jobs that
share an output table must agree on its key and pass-through columns.
Each check raises ``ValueError`` naming both things; the loader adds the file.
"""

from __future__ import annotations

from collections.abc import Iterable

from batch_scorer.config.job import JobConfig
from batch_scorer.names import TOOL_TABLE_NAMES, derived_names, split_table_name


def check_table_clashes(jobs: Iterable[JobConfig]) -> None:
    """Raise ``ValueError`` for the first output table that clashes with another name."""
    jobs = list(jobs)
    _outputs_are_not_sources(jobs)
    _outputs_are_not_tool_tables(jobs)
    _outputs_are_not_derived_names(jobs)
    _shared_outputs_agree(jobs)


def _outputs_are_not_sources(jobs: list[JobConfig]) -> None:
    readers = {j.source.table.casefold(): j.name for j in jobs if j.source.table is not None}
    for job in jobs:
        reader = readers.get(job.output.table.casefold())
        if reader is None:
            continue
        if reader == job.name:
            raise ValueError(
                f"job {job.name!r} reads and writes the same table {job.output.table!r} "
                "(source.table and output.table); give the output its own table"
            )
        raise ValueError(
            f"job {job.name!r} writes output table {job.output.table!r}, which job {reader!r} "
            f"reads as its source.table; a job's output is replaced run by run, so give it "
            f"its own table (a job may read another's {job.output.table}_latest view)"
        )


def _outputs_are_not_tool_tables(jobs: list[JobConfig]) -> None:
    tool = {name.casefold() for name in TOOL_TABLE_NAMES}
    for job in jobs:
        _schema, table = split_table_name(job.output.table)
        if table.casefold() in tool:
            raise ValueError(
                f"job {job.name!r}: output.table {job.output.table!r} is the name of one of "
                f"batch-scorer's own tables ({', '.join(TOOL_TABLE_NAMES)}); choose another name"
            )


def _outputs_are_not_derived_names(jobs: list[JobConfig]) -> None:
    derived: dict[str, tuple[str, str]] = {}
    for job in jobs:
        for name in derived_names(job.output.table):
            derived.setdefault(name.casefold(), (job.name, job.output.table))
    for job in jobs:
        owner = derived.get(job.output.table.casefold())
        if owner is not None:
            suffix = job.output.table[len(owner[1]):]
            raise ValueError(
                f"job {job.name!r}: output.table {job.output.table!r} is the name batch-scorer "
                f"gives the {suffix} table/view of output table {owner[1]!r} (of job {owner[0]!r}); "
                "choose another name"
            )


def _shared_outputs_agree(jobs: list[JobConfig]) -> None:
    first: dict[str, JobConfig] = {}
    for job in jobs:
        seen = first.setdefault(job.output.table, job)
        if seen.source.key != job.source.key:
            raise ValueError(
                f"jobs {seen.name!r} and {job.name!r} write to output table "
                f"{job.output.table!r} with different keys {seen.source.key} and {job.source.key}; "
                "jobs sharing an output table must share key column names "
                "(give one of them its own output.table)"
            )
        if sorted(seen.output.pass_through) != sorted(job.output.pass_through):
            raise ValueError(
                f"jobs {seen.name!r} and {job.name!r} write to output table "
                f"{job.output.table!r} with different output.pass_through columns "
                f"{seen.output.pass_through} and {job.output.pass_through}; jobs sharing an "
                "output table must pass through the same columns (give one of them its own "
                "output.table)"
            )
