"""The local executor: a group's source read once on this machine, each chunk processed
on this process's scoring threads and staged by each job.

The stream loop is the whole of it: read, process (check, score, observe), stage,
report progress; a job whose chunk fails is stopped and the others go on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from sqlalchemy.engine import Engine

from batch_scorer.core.chunk import process_chunk, shared_chunk
from batch_scorer.executors.base import Cancel, StreamJob, StreamSpec
from batch_scorer.executors.threads import ThreadSettings, scorer
from batch_scorer.storage.sources.sql import read_chunks


class LocalExecutor:
    """Streams on the calling thread; chunks are scored on the process's scoring threads."""

    def __init__(self, threads: ThreadSettings, cancel: Cancel | None = None) -> None:
        self.cancel = cancel or Cancel()
        self.score = scorer(threads)

    def stream(self, engine: Engine, spec: StreamSpec, jobs: Sequence[StreamJob]) -> None:
        with engine.connect() as conn, contextlib.closing(
            read_chunks(conn, spec.source, spec.as_of, spec.columns, spec.chunk_size, spec.features)
        ) as chunks:
            for chunk in chunks:
                self.cancel.check()
                alive = [j for j in jobs if j.alive]
                chunk = shared_chunk(chunk, [j.work for j in alive])
                for job in alive:
                    try:
                        job.absorb(process_chunk(job.work, chunk, self.score))
                    except Exception as exc:  # noqa: BLE001 - fails this job only
                        job.fail(exc)
                    job.progress()
                if not any(j.alive for j in jobs):
                    break
