"""What every executor does: stream a group's source through the jobs that read it.

An executor gets a :class:`StreamSpec` (the source, the as_of, the columns and
features the group needs, the chunk size) and the jobs consuming the stream
(:class:`StreamJob`, implemented by the runtime's ``JobRun``). It produces
:class:`batch_scorer.core.chunk.ChunkResult` s, however and wherever it likes
(threads here, Dask workers elsewhere), and hands each to its job's
:meth:`StreamJob.absorb` on the calling thread. The run loop does not know
which executor it has.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Protocol

from sqlalchemy.engine import Engine

from batch_scorer.core.chunk import ChunkResult, ChunkWork
from batch_scorer.errors import Interrupted
from batch_scorer.storage.sources.spec import SourceSpec


@dataclass(frozen=True)
class StreamSpec:
    """One read shared by a group of jobs."""

    source: SourceSpec
    as_of: date
    columns: tuple[str, ...]
    features: tuple[str, ...]
    chunk_size: int


class StreamJob(Protocol):
    """A job consuming a stream: its chunk work, and where its results go."""

    work: ChunkWork

    @property
    def alive(self) -> bool: ...

    def absorb(self, result: ChunkResult) -> None: ...

    def fail(self, exc: BaseException) -> None: ...

    def progress(self) -> None: ...


class Executor(Protocol):
    """Runs a group's stream (module doc)."""

    def stream(self, engine: Engine, spec: StreamSpec, jobs: Sequence[StreamJob]) -> None: ...


class Cancel:
    """Set by the main thread when a signal asks every run to stop: streams on other
    threads (which cannot receive the signal) stop at their next chunk."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum = 15

    def set(self, signum: int) -> None:
        self.signum = signum
        self._event.set()

    def check(self) -> None:
        if self._event.is_set():
            raise Interrupted(self.signum)
