"""The plan of a run: everything a run needs, resolved once from the configuration.

The stages below the runtime (readers, writers, models, checks) never see the
configuration; they get the specs built here.
"""

from __future__ import annotations

from batch_scorer.config import Config, JobConfig
from batch_scorer.storage.sources.spec import SourceSpec


def source_spec(cfg: Config, job: JobConfig) -> SourceSpec:
    """The reader's view of a job's source."""
    src = job.source
    return SourceSpec(
        job=job.name,
        key=tuple(src.key),
        table=src.table,
        query=src.query,
        as_of_column=src.as_of_column,
        pass_through=tuple(job.output.pass_through),
        timezone=cfg.timezone,
    )
