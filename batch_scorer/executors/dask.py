"""The Dask executor: one run's source rows scored across a Dask cluster, published by the driver.

The driver (this process) keeps what makes a run safe: the job's lock, its
ledger row, the staged output and the one publishing transaction
(:mod:`batch_scorer.runtime.run`). This executor only moves the scoring:

* the as_of's rows are cut into key ranges
  (:func:`batch_scorer.storage.sources.partitions.key_partitions`): as many as
  ``executor.partitions``, else ``max(2 x worker threads, rows / 250,000)``
  (:func:`partition_count`);
* each model's bytes reach every worker once (``client.scatter(..., broadcast=True)``);
  the tasks carry a future of them, never the bytes or the estimator;
* a task (:func:`score_partition`) reads its partition on the worker with the
  worker's own engine and the fast reader, checks the sha256 of the bytes it
  got before unpickling them (:func:`batch_scorer.models.loader.load_model_bytes`),
  keeps the loaded model per worker by sha256, checks and scores each chunk with
  :func:`batch_scorer.core.chunk.process_chunk`, and hands back only the
  :class:`~batch_scorer.core.chunk.ChunkResult` s;
* the driver keeps at most ``2 x worker threads`` partitions in flight and
  stages each result as it arrives (:meth:`StreamJob.absorb`); a partition's
  result is absorbed once, by partition index, whatever Dask re-ran. A
  partition that keeps failing (Dask retries a task twice, and reschedules it
  when its worker dies up to ``distributed.scheduler.allowed-failures`` times)
  fails the run whole: nothing is visible.

Credentials: a task carries the database URL without its password
(:func:`worker_url`). A worker connects with
``BATCH_SCORER_WORKER_DATABASE_URL`` from its own environment when set (a
read-only role), else with the task's URL and the password libpq finds on the
worker (``PGPASSWORD``, ``~/.pgpass``). The in-process cluster started for
``address: null`` gets ``PGPASSWORD`` in its worker processes' environment,
handed from this process to its children: it never reaches the scheduler.

Dask is an optional dependency (``pip install 'batch-scorer[dask]'``),
imported only here and only when a run needs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import pickle
import queue
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from batch_scorer.core.checks import RejectedRow, TooManyBadRows
from batch_scorer.core.chunk import ChunkResult, ChunkWork, process_chunk, shared_chunk
from batch_scorer.errors import BatchScorerError, ConfigError, ModelError, RunFailed
from batch_scorer.executors.base import Cancel, StreamJob, StreamSpec
from batch_scorer.executors.threads import ThreadSettings, limit_model_threads, scorer
from batch_scorer.masking import first_line, mask_text
from batch_scorer.models.loader import LoadedModel, load_model_bytes, read_model_file
from batch_scorer.storage.db import create_engine, normalize_url
from batch_scorer.storage.schema import model_versions
from batch_scorer.storage.sources.partitions import Partition, key_partitions
from batch_scorer.storage.sources.spec import SourceSpec
from batch_scorer.storage.sources.sql import read_chunks, select_rows

if TYPE_CHECKING:
    from distributed import Client, Future

log = logging.getLogger(__name__)

EXTRA = "pip install 'batch-scorer[dask]'"
# The environment variable a worker reads its whole database URL from (e.g. a
# read-only role); unset: the task's URL, the password from libpq's own sources.
WORKER_URL_ENV = "BATCH_SCORER_WORKER_DATABASE_URL"
# About this many rows per partition when executor.partitions is not set: a
# partition's result (keys, pass-through, prediction, score) stays a few tens of MB.
ROWS_PER_PARTITION = 250_000
# Partitions per worker thread at least (so a slow partition does not leave a
# core idle at the end), and in flight per worker thread (one running, one queued).
PARTITIONS_PER_THREAD = 2
IN_FLIGHT_PER_THREAD = 2
# A task whose read fails (a lost connection) is run again this many times.
TASK_RETRIES = 2
# How long the driver waits for a result before it looks at the cancel flag again.
POLL_SECONDS = 0.5
WAIT_FOR_WORKERS_SECONDS = 60.0


def require_dask() -> None:
    """ConfigError (exit 2) naming the extra when Dask's distributed scheduler is not installed."""
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"executor.kind is dask, but Dask is not installed ({exc}). Install the extra on this "
            f"machine and on every worker: {EXTRA}; or set executor.kind: local."
        ) from None


@dataclass(frozen=True)
class DaskSettings:
    """The ``executor:`` section, resolved for the executor (it never sees the configuration)."""

    address: str | None = None  # tcp://scheduler:8786; None: an in-process LocalCluster
    partitions: int | None = None  # None: partition_count's rule
    model_threads: int = 1  # OpenMP/BLAS threads of the model in each worker thread
    local_workers: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))


@dataclass(frozen=True)
class LoadOptions:
    """How a worker loads one model's bytes exactly as the driver did."""

    fmt: str
    # The driver loaded it although its scikit-learn version differed: the job allows it.
    allow_version_mismatch: bool
    # A skops file's types the driver accepted (the job's model.trusted_types among them).
    trusted_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class PartitionTask:
    """What every partition task of one stream shares (small and picklable: no secret, no model)."""

    database: str  # the driver's URL without its password (worker_url)
    stream: StreamSpec
    # Each job's ChunkWork with its models described (sha256, features, classes...), estimator None.
    works: tuple[ChunkWork, ...]
    models: tuple[tuple[str, LoadOptions], ...]  # by sha256
    threads: ThreadSettings


@dataclass(frozen=True)
class Failure:
    """A job's failure on a worker, in a form that survives the trip back to the driver."""

    message: str
    rejected: list[RejectedRow] | None = None  # set for TooManyBadRows: the rows it found bad
    rows_read: int = 0  # and the rows of the chunk it gave up on
    error: BaseException | None = None  # the exception itself, when it pickles

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        """``exc`` as a Failure: itself if it pickles, else its masked text."""
        if isinstance(exc, TooManyBadRows):  # its constructor takes the rows: pickle cannot rebuild it
            return cls(str(exc), list(exc.rejected), rows_read=exc.rows_read)
        try:
            pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes, made on the line before
        except Exception:  # noqa: BLE001 - e.g. a model's own exception class
            return cls(mask_text(f"{type(exc).__name__}: {exc}"))
        return cls(str(exc), error=exc)

    def exception(self) -> BaseException:
        """The exception to fail the job with, on the driver."""
        if self.error is not None:
            return self.error
        if self.rejected is not None:
            return TooManyBadRows(self.message, self.rejected, self.rows_read)
        return RunFailed(self.message)


@dataclass
class PartitionResult:
    """What a task hands back: each job's processed chunks, or why that job failed."""

    index: int
    chunks: dict[int, list[ChunkResult]]
    failures: dict[int, Failure]


def worker_url(url: URL) -> tuple[str, str | None]:
    """The URL a task carries (no password: neither the URL's nor a ``password`` query value) and the password."""
    query = dict(url.query)
    password = url.password or _single(query.pop("password", None))
    # URL.create, not url.set(password=None): set() takes None as "keep the password".
    bare = URL.create(url.drivername, url.username, None, url.host, url.port, url.database, query)
    return bare.render_as_string(hide_password=False), None if password is None else str(password)


def _single(value: str | tuple[str, ...] | None) -> str | None:
    return value[0] if isinstance(value, tuple) else value


def partition_count(rows: int, worker_threads: int, configured: int | None = None) -> int:
    """How many partitions a stream is cut into (module doc): ``configured``, else about
    250,000 rows each and at least 2 per worker thread."""
    if configured is not None:
        return configured
    return max(PARTITIONS_PER_THREAD * max(1, worker_threads), math.ceil(rows / ROWS_PER_PARTITION))


def count_rows(conn: Connection, spec: SourceSpec, as_of: date) -> int:
    """The number of source rows of ``as_of`` (one ``count(*)`` the database answers from the key)."""
    sub = select_rows(conn, spec, as_of, spec.key).subquery("src")
    return int(conn.execute(sa.select(sa.func.count()).select_from(sub)).scalar_one())


# --- on the worker -----------------------------------------------------------------

_MODELS_KEPT = 8  # loaded models a worker keeps (by sha256), least recently used out first
_models: OrderedDict[tuple[object, ...], LoadedModel] = OrderedDict()
_engines: dict[str, Engine] = {}
_worker_lock = threading.Lock()


def score_partition(
    task: PartitionTask, partition: Partition, jobs: tuple[int, ...], models: Mapping[str, bytes]
) -> PartitionResult:
    """Read one partition on this worker and process it for each job in ``jobs`` (module doc).

    A job's failure (a refused model, too many bad rows) is handed back for that
    job; a failure to read raises, so Dask runs the task again."""
    works: dict[int, ChunkWork] = {}
    result = PartitionResult(partition.index, {}, {})
    for i in jobs:
        try:
            works[i] = worker_work(task.works[i], dict(task.models), models)
        except Exception as exc:  # noqa: BLE001 - this job fails, the others go on
            result.failures[i] = Failure.of(exc)
    if not works:
        return result
    spec = task.stream
    score = scorer(task.threads)
    result.chunks = {i: [] for i in works}
    with limit_model_threads(task.threads), _worker_engine(task.database).connect() as conn, contextlib.closing(
        read_chunks(conn, spec.source, spec.as_of, spec.columns, spec.chunk_size, spec.features, partition=partition)
    ) as chunks:
        for chunk in chunks:
            chunk = shared_chunk(chunk, list(works.values()))  # noqa: PLW2901 - the same rows, converted once
            for i, work in list(works.items()):
                try:
                    result.chunks[i].append(process_chunk(work, chunk, score))
                except Exception as exc:  # noqa: BLE001 - as the local executor: this job only
                    result.failures[i] = Failure.of(exc)
                    del works[i], result.chunks[i]
            if not works:
                break
    return result


def worker_work(described: ChunkWork, options: Mapping[str, LoadOptions], data: Mapping[str, bytes]) -> ChunkWork:
    """A job's ChunkWork rebuilt on the worker: each described model given its estimator,
    loaded from the bytes the driver scattered after their sha256 was checked."""
    champion = _with_estimator(described.job, described.champion, options, data)
    challengers = tuple((label, _with_estimator(described.job, m, options, data)) for label, m in described.challengers)
    return dataclasses.replace(described, champion=champion, challengers=challengers)


def _with_estimator(
    job: str, described: LoadedModel, options: Mapping[str, LoadOptions], data: Mapping[str, bytes]
) -> LoadedModel:
    opts = options[described.sha256]
    key = (described.sha256, described.features, opts)
    blob = data[described.sha256]
    loaded = None
    # The bytes of every task are checked (sha256 is ~1 GB/s: cheap beside a partition),
    # so bytes that are not the plan's fail alike whether or not this worker has the
    # plan's model loaded already.
    if hashlib.sha256(blob).hexdigest() == described.sha256:
        with _worker_lock:
            loaded = _models.get(key)
            if loaded is not None:
                _models.move_to_end(key)
    if loaded is None:
        try:  # checks the sha256 again, before unpickling: a mismatch is refused here
            loaded = load_model_bytes(
                job, blob, source=described.source, fmt=opts.fmt, pinned_sha256=described.sha256,
                version=described.version, features=described.features,
                allow_version_mismatch=opts.allow_version_mismatch, trusted_types=opts.trusted_types,
            )
        except ModelError as exc:
            raise ModelError(f"{exc} (refused on Dask worker {_worker_name()})") from None
        with _worker_lock:
            _models[key] = loaded
            while len(_models) > _MODELS_KEPT:
                _models.popitem(last=False)
    return dataclasses.replace(described, estimator=loaded.estimator)


def _worker_engine(task_url: str) -> Engine:
    """This worker's engine (one per URL, kept for the worker's life). A pool of one
    connection per worker thread (it reflects the source table; the fast reader keeps
    its own ADBC connection): a task does not pay two connection set-ups."""
    url = os.environ.get(WORKER_URL_ENV) or task_url
    with _worker_lock:
        engine = _engines.get(url)
        if engine is None:
            threads = _worker_threads_here()
            engine = _engines[url] = create_engine(url, pool_size=threads)
    return engine


def _worker_threads_here() -> int:
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):  # not in a Dask worker (a direct call)
        return 1


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):  # not in a Dask worker (a direct call)
        return f"pid {os.getpid()}"


# --- on the driver -----------------------------------------------------------------


class DaskExecutor:
    """Streams a group's source through a Dask cluster (module doc); one cluster/client per
    invocation, made on the first stream and closed by :meth:`close` (or ``with``)."""

    def __init__(self, settings: DaskSettings, cancel: Cancel | None = None) -> None:
        require_dask()
        self.settings = settings
        self.cancel = cancel or Cancel()
        self._client: Client | None = None
        self._cluster: Any = None
        self._lock = threading.Lock()  # groups may stream on several threads at once

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client and, for ``address: null``, stop the in-process cluster."""
        with self._lock:
            client, cluster, self._client, self._cluster = self._client, self._cluster, None, None
        # A client whose scheduler is gone logs its cancelled reconnection as a
        # traceback while closing: the run already said what happened, in words.
        with _quiet("distributed", "distributed.client", "distributed.utils"):
            for closing in (client, cluster):
                if closing is not None:
                    try:
                        closing.close()
                    except Exception:  # noqa: BLE001 - closing never hides the run's outcome
                        log.debug("closing the Dask %s failed", type(closing).__name__, exc_info=True)

    def client(self, engine: Engine) -> Client:
        """The invocation's client, connected (or its LocalCluster started) on first use."""
        with self._lock:
            if self._client is None:
                self._client, self._cluster = _connect(self.settings, normalize_url(engine.url))
            return self._client

    def stream(self, engine: Engine, spec: StreamSpec, jobs: Sequence[StreamJob]) -> None:
        """Score ``spec``'s rows for ``jobs`` on the cluster; stage each partition's result."""
        client = self.client(engine)
        threads = _worker_threads(client, self.settings.address)
        with engine.connect() as conn:
            rows = None if self.settings.partitions is not None else count_rows(conn, spec.source, spec.as_of)
            parts = key_partitions(conn, spec.source, spec.as_of,
                                   partition_count(rows or 0, threads, self.settings.partitions))
        log.info("job %s: %s in %d partitions on %d Dask worker threads", spec.source.job,
                 "rows" if rows is None else f"{rows} rows", len(parts), threads)
        url, _ = worker_url(normalize_url(engine.url))
        models = {m.sha256: m for job in jobs for m in _models_of(job.work)}
        data = {sha: _model_bytes(engine, spec.source.job, m) for sha, m in models.items()}
        task = PartitionTask(
            url, spec, tuple(_described(job.work) for job in jobs),
            tuple((sha, _load_options(m, data[sha])) for sha, m in models.items()),
            ThreadSettings(model_threads=self.settings.model_threads, scoring_threads=1),
        )
        # Each model's bytes go to every worker once; the tasks name them by future. A
        # key of their own (hash=False): a content-hashed key may still be being
        # forgotten for a client that died mid-run (a killed driver) when the next run
        # scatters the same bytes, and the new run's tasks then find no data.
        scattered = {sha: client.scatter(blob, broadcast=True, hash=False) for sha, blob in data.items()}
        del data
        try:
            _Stream(client, task, scattered, jobs, self.cancel, IN_FLIGHT_PER_THREAD * threads).run(parts)
        finally:
            for future in scattered.values():
                future.release()


class _Stream:
    """One stream's partitions: a bounded window in flight, each result absorbed once."""

    def __init__(self, client: Client, task: PartitionTask, models: Mapping[str, Future],
                 jobs: Sequence[StreamJob], cancel: Cancel, window: int) -> None:
        self.client, self.task, self.models, self.jobs, self.cancel = client, task, models, jobs, cancel
        self.window = max(1, window)
        self.token = uuid.uuid4().hex[:8]
        self.done: queue.Queue[Future] = queue.Queue()
        self.in_flight: dict[str, tuple[Future, Partition]] = {}
        self.absorbed: set[int] = set()

    def run(self, parts: Sequence[Partition]) -> None:
        """Submit, collect and absorb every partition (or stop when no job is alive)."""
        todo = list(reversed(parts))
        try:
            while True:
                alive = tuple(i for i, job in enumerate(self.jobs) if job.alive)
                if not alive:
                    return
                while todo and len(self.in_flight) < self.window:
                    self._submit(todo.pop(), alive)
                if not self.in_flight:
                    return
                self._collect()
        finally:
            # An error, an interrupt or dead jobs: nothing more is needed from the cluster.
            futures = [f for f, _ in self.in_flight.values()]
            if futures:
                self.client.cancel(futures)

    def _submit(self, part: Partition, alive: tuple[int, ...]) -> None:
        key = f"batch-scorer-{self.task.stream.source.job}-{self.token}-{part.index}"
        future = self.client.submit(score_partition, self.task, part, alive, dict(self.models), key=key,
                                    retries=TASK_RETRIES, pure=False)
        self.in_flight[future.key] = (future, part)
        future.add_done_callback(self.done.put)

    def _collect(self) -> None:
        """Wait for one finished partition (looking at the cancel flag meanwhile) and absorb it."""
        while True:
            self.cancel.check()
            try:
                future = self.done.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            if future.key in self.in_flight:
                break
        _, part = self.in_flight.pop(future.key)
        self._absorb(_result(future, part, self.task.stream.source.job))

    def _absorb(self, result: PartitionResult) -> None:
        if result.index in self.absorbed:  # a partition is staged once, however often it ran
            log.debug("partition %d came back again; ignored", result.index)
            return
        self.absorbed.add(result.index)
        for i, failure in result.failures.items():
            if self.jobs[i].alive:
                self.jobs[i].fail(failure.exception())
        for i, chunks in result.chunks.items():
            job = self.jobs[i]
            for chunk in chunks:
                if not job.alive:
                    break
                try:
                    job.absorb(chunk)
                except Exception as exc:  # noqa: BLE001 - fails this job only, as locally
                    job.fail(exc)
            job.progress()


def _result(future: Future, part: Partition, job: str) -> PartitionResult:
    """A finished future's result; a task that failed for good fails the stream, in words."""
    if future.status == "finished":
        return future.result()
    if future.status == "cancelled":
        raise RunFailed(f"job {job!r}: partition {part.index + 1} of {part.count} was cancelled by the Dask "
                        "scheduler (was it restarted, or the connection to it lost?); nothing was published.")
    exc = future.exception()
    if isinstance(exc, BatchScorerError):
        raise exc
    from distributed.scheduler import KilledWorker

    name = type(exc).__name__
    if isinstance(exc, KilledWorker):
        raise RunFailed(
            f"job {job!r}: partition {part.index + 1} of {part.count} was running on Dask workers that died "
            f"each time it ran ({mask_text(first_line(exc))}); nothing was published. Look at the workers' "
            "logs (out of memory? raise their memory limit, or set executor.partitions higher)."
        ) from None
    if isinstance(exc, ImportError) and "batch_scorer" in str(exc):
        raise RunFailed(f"job {job!r}: the Dask workers cannot import batch_scorer ({exc}); install the same "
                        f"batch-scorer version on every worker ({EXTRA}).") from None
    raise RunFailed(f"job {job!r}: partition {part.index + 1} of {part.count} failed on a Dask worker: "
                    f"{mask_text(f'{name}: {first_line(exc)}')}; nothing was published.") from exc


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """The loggers ``names`` silent but for critical messages, for the duration (Dask
    sets levels on its child loggers: silencing the parent alone would not do)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _connect(settings: DaskSettings, url: URL) -> tuple[Client, Any]:
    """A client of the scheduler at ``settings.address``, or of a new in-process LocalCluster.

    Results are gathered from the workers directly (``direct_to_workers``): the output
    frames do not pass through the scheduler, which would then carry every row."""
    from distributed import Client, LocalCluster

    if settings.address is not None:
        try:
            return Client(settings.address, set_as_default=False, direct_to_workers=True), None
        except (OSError, TimeoutError) as exc:
            raise RunFailed(
                f"cannot reach the Dask scheduler at executor.address {settings.address}: "
                f"{mask_text(first_line(exc))}. Start it (`dask scheduler`) or fix executor.address."
            ) from None
    _, password = worker_url(url)
    # Processes, one thread each: a worker thread is a core, the model's native code
    # is capped per thread (DaskSettings.model_threads). The password reaches the
    # workers as their environment, from this process to its children only.
    cluster = LocalCluster(
        n_workers=settings.local_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
        env={"PGPASSWORD": password} if password else None,
    )
    try:
        client = Client(cluster, set_as_default=False, direct_to_workers=True)
    except BaseException:
        cluster.close()
        raise
    log.info("started an in-process Dask cluster: %d worker processes of 1 thread; dashboard %s",
             settings.local_workers, cluster.dashboard_link)
    return client, cluster


def _worker_threads(client: Client, address: str | None) -> int:
    """The cluster's worker threads, waiting (a while) for a first worker to join."""
    threads = sum(client.nthreads().values())
    if threads:
        return threads
    try:
        client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS_SECONDS)
    except TimeoutError:
        raise RunFailed(
            f"no Dask worker joined the scheduler at {address or 'the local cluster'} within "
            f"{WAIT_FOR_WORKERS_SECONDS:.0f}s; start workers (`dask worker {address or 'tcp://host:8786'}`)."
        ) from None
    return max(1, sum(client.nthreads().values()))


def _models_of(work: ChunkWork) -> list[LoadedModel]:
    return [work.champion, *(m for _, m in work.challengers)]


def _described(work: ChunkWork) -> ChunkWork:
    """``work`` without its estimators: what a task carries (the bytes travel apart, once)."""
    return dataclasses.replace(
        work, champion=dataclasses.replace(work.champion, estimator=None),
        challengers=tuple((label, dataclasses.replace(m, estimator=None)) for label, m in work.challengers),
    )


def _model_bytes(engine: Engine, job: str, model: LoadedModel) -> bytes:
    """The bytes of a model the plan loaded: its file read again, or its registry artifact.

    Whatever is read here, the workers load it only if its sha256 is the one the
    plan checked: a file changed since is refused on the workers, before unpickling."""
    if model.path is not None:
        return read_model_file(job, model.path)
    with engine.connect() as conn:
        artifact = conn.execute(
            sa.select(model_versions.c.artifact).where(model_versions.c.sha256 == model.sha256).limit(1)
        ).scalar()
    if artifact is None:
        raise ModelError(f"job {job!r}: model {model.source} (sha256 {model.sha256}) has no file and is not "
                         "in the model registry: the Dask workers cannot be sent its bytes.")
    return bytes(artifact)


def _load_options(model: LoadedModel, data: bytes) -> LoadOptions:
    """How the workers load ``model`` as the plan did (same version allowance, same trusted types)."""
    import sklearn

    trusted: tuple[str, ...] = ()
    if model.fmt == "skops" and hashlib.sha256(data).hexdigest() == model.sha256:
        import skops.io as sio

        trusted = tuple(sio.get_untrusted_types(data=data))  # the plan accepted each of them
    return LoadOptions(model.fmt, model.pickled_sklearn_version != sklearn.__version__, trusted)
