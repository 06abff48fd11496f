"""One run of one job, end to end (DESIGN.md "The flow of one run").

resolve (config, model, columns) -> lock -> ledger row -> stream, check, score,
write -> publish with the ledger row -> summary line. Any failure after the
ledger row exists marks it ``failed`` and leaves nothing visible.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from batch_scorer.config import Config, JobConfig
from batch_scorer.core.checks import Rejections, TooManyBadRows, check_score_contract, score_checked
from batch_scorer.errors import BatchScorerError, DatabaseError, RunFailed
from batch_scorer.executors.threads import limit_model_threads, score_in_parts
from batch_scorer.masking import first_line, mask_text
from batch_scorer.models.loader import LoadedModel, load_model
from batch_scorer.models.scoring import prediction_kind
from batch_scorer.runtime.plan import source_spec
from batch_scorer.runtime.signals import Interrupted
from batch_scorer.storage import ledger, locks
from batch_scorer.storage.db import DuplicateKeys, begin_write
from batch_scorer.storage.retry import RetryPolicy, is_sqlite_locked, with_retries
from batch_scorer.storage.schema import create_tool_tables, rejected_rows, utcnow
from batch_scorer.storage.sinks import staging as sink
from batch_scorer.storage.sinks.staging import RunStamp, open_writer, prepare_output_table
from batch_scorer.storage.sources import sql as source
from batch_scorer.storage.sources.spec import SourceSpec
from batch_scorer.storage.sources.sql import SourceColumns, check_columns, needed_columns, probe_columns, read_chunks

log = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]
# Called with the model version while the job's lock is held, before the run
# starts; a non-empty reason means "already done": the run is not started
# (the scheduler and backfill use it so a fire or a date is scored once).
SkipCheck = Callable[[str], str | None]


@dataclass(frozen=True)
class RunResult:
    """What one run did; ``status`` is ``succeeded``, ``failed``, ``skipped`` (lock held),
    ``already_done`` (a ``skip_if`` check said so; nothing written) or ``invalid``."""

    job: str
    status: str
    as_of: date | None = None
    run_id: int | None = None
    model_version: str | None = None
    rows_read: int = 0
    rows_scored: int = 0
    rows_rejected: int = 0
    seconds: float = 0.0
    output_table: str | None = None
    error: str | None = None
    exit_code: int = 0


@dataclass(frozen=True)
class ResolvedJob:
    """A job with its model loaded and its source's columns checked."""

    job: JobConfig
    model: LoadedModel
    source: SourceSpec
    columns: SourceColumns
    read_columns: list[str]


def default_as_of(cfg: Config, now: datetime | None = None) -> date:
    """Today in the configured timezone."""
    tz = ZoneInfo(cfg.timezone)
    return (now or utcnow()).astimezone(tz).date()


def resolve_job(cfg: Config, engine: Engine, name: str, as_of: date) -> ResolvedJob:
    """Load the model (pin checked first) and check the source has its columns."""
    job = cfg.job(name)
    model = load_model(
        job.name,
        job.model.path,
        pinned_sha256=job.model.sha256,
        version=job.model.version,
        features=job.features,
        allow_version_mismatch=job.allow_version_mismatch,
    )
    check_score_contract(job.name, job.output.score, model)
    spec = source_spec(cfg, job)
    with engine.connect() as conn:
        columns = probe_columns(conn, spec, as_of)
    check_columns(spec, model.features, columns)
    return ResolvedJob(job, model, spec, columns, needed_columns(spec, model.features))


def prepare_output(engine: Engine, resolved: ResolvedJob) -> sa.Table:
    """Create the job's output table and view if missing (keys and pass-through
    columns take the source's types); check an existing one fits the job."""
    job, types = resolved.job, resolved.columns.types
    return prepare_output_table(
        engine,
        job.output.table,
        [(k, types[k]) for k in job.source.key],
        [(c, types[c]) for c in job.output.pass_through],
        prediction_kind(resolved.model),
        job.name,
    )


def run_job(
    cfg: Config,
    engine: Engine,
    name: str,
    as_of: date | None = None,
    trigger: str = "manual",
    on_progress: ProgressFn | None = None,
    skip_if: SkipCheck | None = None,
) -> RunResult:
    """Score one job for one as_of. Raises :class:`BatchScorerError` subclasses.

    ``skip_if`` (see :data:`SkipCheck`) may return a reason to skip; the result
    then has status ``already_done`` and nothing is written."""
    as_of = as_of or default_as_of(cfg)
    # Resolve first: a bad job (config, model, columns) must write nothing.
    resolved = resolve_job(cfg, engine, name, as_of)
    policy = RetryPolicy(cfg.database.retries, cfg.database.retry_backoff_seconds)
    try:
        create_tool_tables(engine)
        # The unit of retry is the whole run: a failed attempt has rolled back
        # and recorded its own ledger row; the next one starts a new row.
        return with_retries(
            lambda _attempt: _locked_run(cfg, engine, resolved, as_of, trigger, on_progress, skip_if),
            policy,
            f"job {resolved.job.name}",
        )
    except sa.exc.OperationalError as exc:
        if is_sqlite_locked(exc):
            raise DatabaseError(
                f"job {resolved.job.name!r}: {_sqlite_locked_text(engine)}"
            ) from exc
        raise


def _sqlite_locked_text(engine: Engine) -> str:
    return (
        f"database is locked by another writer: this run waited "
        f"database.busy_timeout_seconds for the write lock on the SQLite file "
        f"{engine.url.database} and gave up. Another "
        "process (a sqlite3 shell, a tool with an open write transaction) holds a write "
        "transaction; let it finish, or raise database.busy_timeout_seconds."
    )


def _locked_run(
    cfg: Config,
    engine: Engine,
    resolved: ResolvedJob,
    as_of: date,
    trigger: str,
    on_progress: ProgressFn | None,
    skip_if: SkipCheck | None = None,
) -> RunResult:
    """One attempt: take the job's lock, open a ledger row, execute the run."""
    job, model = resolved.job, resolved.model
    with locks.job_lock(engine, job.name) as lock:
        ledger.mark_abandoned(engine, job.name)
        reason = skip_if(model.version) if skip_if is not None else None
        if reason:
            log.info("job %s as_of %s: not run: %s", job.name, as_of, reason)
            return RunResult(job.name, "already_done", as_of, model_version=model.version,
                             output_table=job.output.table, error=reason)
        run_id = ledger.start_run(
            engine,
            job=job.name,
            model_version=model.version,
            model_sha256=model.sha256,
            model_sklearn_version=model.pickled_sklearn_version,
            as_of=as_of,
            trigger=trigger,
            output_table=job.output.table,
        )
        return _execute(cfg, engine, resolved, as_of, run_id, on_progress, lock)


def _execute(
    cfg: Config,
    engine: Engine,
    resolved: ResolvedJob,
    as_of: date,
    run_id: int,
    on_progress: ProgressFn | None,
    lock: locks.JobLock | None = None,
) -> RunResult:
    job, model = resolved.job, resolved.model
    started = time.monotonic()
    stamp = RunStamp(job.name, as_of, model.version, run_id, utcnow())
    counts = {"rows_read": 0, "rows_scored": 0, "rows_rejected": 0}
    # Rejected rows are saved as they accumulate (bounded memory), and kept
    # for a failed run too: they are how you debug it (README "Bad rows").
    rejections = Rejections(flush=lambda rows: _save_rejections(engine, run_id, job.name, rows))
    writer = None
    try:
        table = prepare_output(engine, resolved)
        writer = open_writer(engine, table, stamp, job.source.key, job.output.pass_through)
        phases = {"prepare": time.monotonic() - started}
        scoring = 0.0
        # On PostgreSQL, reading and writing run on their own threads (pg_fast):
        # this loop only checks and scores. closing(): a failed run stops the
        # reader thread at once, not when the generator is garbage-collected.
        with engine.connect() as read_conn, limit_model_threads(), contextlib.closing(
            read_chunks(read_conn, resolved.source, as_of, resolved.read_columns, cfg.chunk_size(job), model.features)
        ) as chunks:
            for chunk in chunks:
                phases.setdefault("first chunk", time.monotonic() - started)
                t0 = time.monotonic()
                counts["rows_read"] += len(chunk)
                # NULL keys, unconvertible values, rows the model raises on
                # (found by bisection) and non-finite scores are rejected here.
                checked = score_checked(
                    model, chunk, job.source.key, job_name=job.name,
                    want_score=job.output.score is not False,
                    max_rejected_fraction=cfg.max_rejected_fraction(job),
                    scorer=score_in_parts,
                )
                rejections.extend(checked.rejected)
                if len(checked.rows):
                    try:
                        writer.write(checked.rows, checked.prediction, checked.score)
                    except sa.exc.IntegrityError as exc:
                        raise _duplicates_error(engine, resolved, as_of, exc) from exc
                    counts["rows_scored"] += len(checked.rows)
                if on_progress is not None:
                    on_progress(counts["rows_read"])
                scoring += time.monotonic() - t0
        phases["read+score+write"] = time.monotonic() - started
        counts["rows_rejected"] = len(rejections)
        _check_outcome(cfg, job, as_of, counts, rejections)

        def finish(conn: Connection) -> None:
            # Inside the publish transaction, before anything is visible.
            if lock is not None:
                lock.verify(conn)
            if not table.info["unique_keys"]:
                _check_duplicate_keys(conn, table, stamp, job, as_of)
            _insert_rejections(conn, run_id, job.name, rejections.rows)
            ledger.finish_run(conn, run_id, "succeeded", **counts)

        try:
            writer.publish(finish)
        except sa.exc.IntegrityError as exc:
            raise _duplicates_error(engine, resolved, as_of, exc) from exc
        writer = None
        phases["published"] = time.monotonic() - started
        log.debug(
            "job %s run %d: %s; main thread busy %.2fs checking, scoring and queueing",
            job.name, run_id, ", ".join(f"{k} at {v:.2f}s" for k, v in phases.items()), scoring,
        )
    except BaseException as exc:
        if writer is not None:
            try:
                writer.abort()
            except Exception:  # noqa: BLE001 - the connection may be dead; never mask exc
                log.debug("job %s: aborting the writer failed", job.name, exc_info=True)
        reason = _error_text(exc)
        if isinstance(exc, TooManyBadRows):
            rejections.extend(exc.rejected, flush=False)
        counts["rows_rejected"] = len(rejections)
        # Keep a failed run's rejected rows for debugging, unless the database
        # or the user (a signal) is why it failed: then only the ledger row.
        if rejections.rows and isinstance(exc, BatchScorerError) and not isinstance(exc, DatabaseError):
            try:
                _save_rejections(engine, run_id, job.name, rejections.rows)
            except sa.exc.SQLAlchemyError:
                log.warning("job %s: could not record the rejected rows of run %d", job.name, run_id)
        try:
            ledger.fail_run(engine, run_id, reason, **counts)
        except sa.exc.SQLAlchemyError as ledger_exc:
            # E.g. the server is gone: one line, not a traceback; the next run
            # of the job finds the row still 'running' and marks it abandoned.
            log.error(
                "job %s: could not record run %d as failed (%s); the next run will mark it abandoned",
                job.name, run_id, mask_text(first_line(ledger_exc)),
            )
        log.error("job %s: run %d failed: %s", job.name, run_id, reason)
        if isinstance(exc, BatchScorerError):
            exc.run_id = run_id
        if isinstance(exc, BatchScorerError) or not isinstance(exc, Exception):
            raise
        failed = RunFailed(f"job {job.name!r}: run {run_id} failed: {reason}")
        failed.run_id = run_id
        raise failed from exc
    seconds = time.monotonic() - started
    log.info(
        "job %s run %d as_of %s model %s: %d rows read, %d scored, %d rejected, %.1fs -> %s",
        job.name, run_id, as_of, model.version, counts["rows_read"], counts["rows_scored"],
        counts["rows_rejected"], seconds, job.output.table,
    )
    return RunResult(
        job=job.name,
        status="succeeded",
        as_of=as_of,
        run_id=run_id,
        model_version=model.version,
        seconds=seconds,
        output_table=job.output.table,
        **counts,
    )


def _check_outcome(
    cfg: Config, job: JobConfig, as_of: date, counts: dict[str, int], rejections: Rejections
) -> None:
    if counts["rows_read"] == 0 and not job.allow_empty:
        raise RunFailed(
            f"job {job.name!r}: the source returned no rows for as_of {as_of}; published "
            "predictions were left as they are. If an empty result is expected, set "
            "allow_empty: true on the job."
        )
    limit = cfg.max_rejected_fraction(job)
    if counts["rows_read"] and len(rejections) / counts["rows_read"] > limit:
        reasons = "; ".join(f"{r} ({n})" for r, n in rejections.top_reasons())
        raise RunFailed(
            f"job {job.name!r}: {len(rejections)} of {counts['rows_read']} rows could not be "
            f"scored, above max_rejected_fraction {limit}; nothing was published. Top "
            f"reasons: {reasons}."
        )


def _check_duplicate_keys(
    conn: Connection, table: sa.Table, stamp: RunStamp, job: JobConfig, as_of: date
) -> None:
    """For an output table whose key index is not unique: the run's rows, by query."""
    dupes = sink.find_duplicate_keys(conn, table, stamp, job.source.key)
    if dupes.count:
        raise _duplicates_failure(job, as_of, dupes)


def _duplicates_error(
    engine: Engine, resolved: ResolvedJob, as_of: date, exc: sa.exc.IntegrityError
) -> BaseException:
    """The output table's unique key index refused a row: name the source's duplicate keys."""
    try:
        with engine.connect() as conn:
            dupes = source.duplicate_source_keys(conn, resolved.source, as_of)
    except sa.exc.SQLAlchemyError:
        log.debug("job %s: counting the source's duplicate keys failed", resolved.job.name, exc_info=True)
        return exc
    return _duplicates_failure(resolved.job, as_of, dupes) if dupes.count else exc


def _duplicates_failure(job: JobConfig, as_of: date, dupes: DuplicateKeys) -> RunFailed:
    examples = ", ".join(f"{json.dumps(k, default=str)} ({n} rows)" for k, n in dupes.examples)
    return RunFailed(
        f"job {job.name!r}: the source has {dupes.count} key(s) that occur more than once "
        f"for as_of {as_of} ({dupes.rows} rows), e.g. {examples}; nothing was published. "
        f"Each {', '.join(job.source.key)} must appear once per as_of: deduplicate the "
        "source (e.g. in the query) or add the missing column to source.key."
    )


def _save_rejections(engine: Engine, run_id: int, job: str, rows: list[tuple[str, str]]) -> None:
    """Rejected rows in their own transaction (batches flushed during the run)."""
    with begin_write(engine) as conn:
        _insert_rejections(conn, run_id, job, rows)


def _insert_rejections(conn: Connection, run_id: int, job: str, rows: list[tuple[str, str]]) -> None:
    if rows:
        conn.execute(
            rejected_rows.insert(),
            [{"run_id": run_id, "job": job, "key": k, "reason": r} for k, r in rows],
        )


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, Interrupted):
        return f"interrupted by {exc.signame}; rolled back, nothing published"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (SIGINT); rolled back, nothing published"
    if is_sqlite_locked(exc):
        return "database is locked by another writer (gave up after database.busy_timeout_seconds)"
    if isinstance(exc, sa.exc.SQLAlchemyError):
        return mask_text(f"{type(exc).__name__}: {first_line(exc)}")
    return mask_text(str(exc) or type(exc).__name__)
