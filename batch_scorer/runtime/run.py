"""Runs of jobs that share one read: lock, ledger row, stream, publish.

:func:`run_group` runs the plans of jobs that read the same source rows (one job
is a group of one): it takes each job's lock and opens its ledger row, streams
the source once through the executor, each job checking, scoring and staging
its own rows (:class:`JobRun`), then publishes each job on its own, all or
nothing, together with its ledger row. A job that fails never stops or spoils
the others; a failure after a job's ledger row exists marks it ``failed`` and
leaves nothing of it visible.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from batch_scorer.core.checks import Rejections, TooManyBadRows
from batch_scorer.core.chunk import ChunkResult, ChunkWork, Comparison
from batch_scorer.errors import BatchScorerError, DatabaseError, LockHeld, RunFailed
from batch_scorer.executors.base import Executor, StreamSpec
from batch_scorer.masking import first_line, mask_text
from batch_scorer.runtime.monitor import MonitorOutcome, RunMonitor
from batch_scorer.runtime.outcome import RunResult, Status, error_text, from_exception
from batch_scorer.runtime.spec import RunPlan
from batch_scorer.storage import ledger, locks
from batch_scorer.storage.db import DuplicateKeys, begin_write, duplicate_keys
from batch_scorer.storage.retry import is_lock_wait_timeout
from batch_scorer.storage.schema import (
    SHADOW_COLUMN,
    RunStatus,
    drift,
    feature_profiles,
    rejected_rows,
    shadow_comparisons,
    utcnow,
)
from batch_scorer.storage.sinks.output import OutputSpec, PreparedTable, prepare_output_table
from batch_scorer.storage.sinks.publish import Publication
from batch_scorer.storage.sources import sql as source

log = logging.getLogger(__name__)

# Called after each chunk with the job's name, its run id, the rows read so far
# and the seconds since the job's run started.
ProgressFn = Callable[[str, int, int, float], None]
# Called with the model version while the job's lock is held, before the run
# starts; a non-empty reason means "already done": the run is not started
# (the scheduler and backfill use it so a fire or a date is scored once).
SkipCheck = Callable[[RunPlan], str | None]


@dataclass
class Attempt:
    """The outcome of one job in a group: its result and, if it failed, why."""

    plan: RunPlan
    result: RunResult
    error: BaseException | None = None


class JobRun:
    """One job's run in progress: its lock held, its ledger row open, its rows staged."""

    def __init__(
        self, plan: RunPlan, engine: Engine, run_id: int, lock: locks.JobLock, on_progress: ProgressFn | None = None
    ) -> None:
        self.plan, self.engine, self.run_id, self.lock = plan, engine, run_id, lock
        self._on_progress = on_progress
        self.started = time.monotonic()
        self.counts = {"rows_read": 0, "rows_scored": 0, "rows_rejected": 0}
        self.error: BaseException | None = None
        self.monitor = RunMonitor(plan.monitor) if plan.monitor is not None else None
        self.drift_status: str | None = None
        # Rejected rows are saved as they accumulate (bounded memory), and kept
        # for a failed run too: they are how you debug it.
        self.rejections = Rejections(flush=lambda rows: _save_rejections(engine, run_id, plan.job, rows))
        self.publication = Publication(engine, run_id, plan.job, plan.as_of)
        # Challengers the plan could not use are recorded with their error.
        self.comparisons: dict[str, Comparison] = {f.label: Comparison(error=f.error) for f in plan.failed_challengers}
        self._main, shadows = self._stages()
        self._main_stage = self.publication.stage(self._main)
        # One stage per challenger: its label and version are constants of its rows.
        self._shadow_stages = {label: self.publication.stage(spec) for label, spec in shadows.items()}
        self._dropped: set[str] = set()
        self.work = ChunkWork(
            job=plan.job, keys=plan.source.key, champion=plan.champion.model,
            main_columns=tuple(self._main.row_columns),
            challengers=tuple((c.label, c.model) for c in plan.challengers if c.label in shadows),
            shadow_columns=tuple(self._main.row_columns),
            want_score=plan.settings.want_score, max_rejected_fraction=plan.settings.max_rejected_fraction,
            observers=(self.monitor.observer,) if self.monitor is not None else (),
        )

    def _stages(self) -> tuple[OutputSpec, dict[str, OutputSpec]]:
        plan = self.plan
        prepared = prepare_output_table(self.engine, plan.output, plan.prediction_kind, plan.job,
                                        plan.counts_view, create=True)
        constants = {"job": plan.job, "as_of": plan.as_of, "model_version": plan.champion.stamp.version,
                     "run_id": self.run_id, "scored_at": utcnow()}
        main = _spec(prepared, constants, plan)
        if not plan.challengers:
            return main, {}
        assert plan.shadow is not None
        try:
            shadow = prepare_output_table(self.engine, plan.shadow, plan.prediction_kind, plan.job,
                                          plan.classifier, create=True, shadow=True)
        except BatchScorerError as exc:
            # E.g. a scorer that may not create the shadow table: the challengers
            # fail (reported at publish), the champion runs.
            for c in plan.challengers:
                self.comparisons[c.label] = Comparison(error=mask_text(str(exc)))
            return main, {}
        return main, {
            c.label: _spec(shadow, {**constants, "model_version": c.stamp.version, SHADOW_COLUMN: c.label}, plan)
            for c in plan.challengers
        }

    @property
    def alive(self) -> bool:
        return self.error is None

    def absorb(self, result: ChunkResult) -> None:
        """Stage one processed chunk (on the driver, whoever processed it)."""
        self.counts["rows_read"] += result.rows_read
        self.rejections.extend(result.rejected)
        if len(result.main):
            try:
                self._main_stage.write(result.main)
            except sa.exc.IntegrityError as exc:
                raise _duplicates_error(self.engine, self.plan, exc) from exc
            self.counts["rows_scored"] += len(result.main)
        for label, comp in result.comparisons.items():
            if label not in self._dropped:
                self.comparisons.setdefault(label, Comparison()).add(comp)
        if self.monitor is not None:
            self.monitor.absorb(result.observed)
        for label, frame in result.shadows.items():
            if label not in self._dropped and not self.comparisons[label].error:
                self._shadow_stages[label].write(frame)
        failed = {label for label, comp in self.comparisons.items() if comp.error} & set(self._shadow_stages)
        if failed - self._dropped:
            self._drop(failed - self._dropped)

    def _drop(self, labels: set[str]) -> None:
        """Challengers that failed on a chunk are scored no more; the rows they staged are
        removed at publish (a challenger's rows are all of its rows, or none)."""
        self._dropped |= labels
        for label in labels:
            log.warning("job %s run %d: challenger %s failed and is not scored further: %s", self.plan.job,
                        self.run_id, label, self.comparisons[label].error)
        self.work = dataclasses.replace(
            self.work, challengers=tuple((lb, m) for lb, m in self.work.challengers if lb not in self._dropped))

    def progress(self) -> None:
        """Report rows read so far (after each chunk)."""
        if self._on_progress is not None:
            self._on_progress(self.plan.job, self.run_id, self.counts["rows_read"], time.monotonic() - self.started)

    def fail(self, exc: BaseException) -> None:
        """Stop this job (the others in its group go on); recorded when the group ends."""
        if isinstance(exc, TooManyBadRows):
            self._count_bad_chunk(exc)
        self.error = exc

    def _count_bad_chunk(self, exc: TooManyBadRows) -> None:
        """The chunk a :class:`TooManyBadRows` gave up on: its rows were read, its bad rows found."""
        self.rejections.extend(exc.rejected, flush=False)
        self.counts["rows_read"] += exc.rows_read

    def publish(self) -> RunResult:
        """Make the run visible with its ledger row, or record why it cannot be."""
        try:
            _check_outcome(self.plan, self.counts, self.rejections)
            self.counts["rows_rejected"] = len(self.rejections)
            drifted = self._add_monitoring()  # on_alert: fail raises here, before anything is visible
            self.publication.add_rows(shadow_comparisons, self._comparison_rows())
            if self.plan.shadow is not None and (self._shadow_stages or not self.plan.challengers):
                # The shadow table exists (staged now, or found by the plan): the
                # rows of the runs this one replaces leave it too.
                self.publication.also_replace_in(self.plan.shadow)
            try:
                replaced = self.publication.publish(self._finish, verify=self.lock.verify)
            except sa.exc.IntegrityError as exc:
                raise _duplicates_error(self.engine, self.plan, exc) from exc
        except BaseException as exc:
            result = self.record_failure(exc)
            if not isinstance(exc, Exception):
                raise
            return result
        seconds = time.monotonic() - self.started
        plan = self.plan
        log.info("job %s run %d as_of %s model %s: %d rows read, %d scored, %d rejected, %.1fs -> %s%s",
                 plan.job, self.run_id, plan.as_of, plan.champion.stamp.version, self.counts["rows_read"],
                 self.counts["rows_scored"], self.counts["rows_rejected"], seconds, plan.output_name,
                 f" (replaced run {', '.join(map(str, replaced))})" if replaced else "")
        for label, comp in self.comparisons.items():
            if comp.error and label not in self._dropped:  # a dropped one was reported when it failed
                log.warning("job %s run %d: challenger %s: not scored: %s", plan.job, self.run_id, label, comp.error)
            elif not comp.error:
                log.info("job %s run %d: challenger %s: %d rows -> %s, agreement %s", plan.job, self.run_id, label,
                         comp.rows, plan.shadow.name if plan.shadow is not None else "-", comp.label_agreement)
        if drifted is not None and drifted.status != "ok":
            log.warning("job %s run %d as_of %s: %s", plan.job, self.run_id, plan.as_of, drifted.log_line())
        return RunResult(plan.job, Status.SUCCEEDED, plan.as_of, run_id=self.run_id, seconds=seconds,
                         output_table=plan.output_name, drift_status=self.drift_status, **self._model_fields(),
                         **self.counts)

    def _add_monitoring(self) -> MonitorOutcome | None:
        """The run's profile and drift rows, added to its publication; the worst status kept."""
        if self.monitor is None:
            return None
        plan = self.plan
        outcome = self.monitor.finish(self.run_id, plan.job, plan.as_of, plan.champion.stamp)
        if outcome is not None:
            self.publication.add_rows(feature_profiles, outcome.profile_rows)
            self.publication.add_rows(drift, outcome.drift_rows)
            self.drift_status = outcome.status
        return outcome

    def _finish(self, conn: Connection) -> None:
        # Inside the publish transaction, before anything is visible.
        if not self._main.unique_keys:
            _check_duplicate_keys(conn, self._main, self.plan)
        _insert_rejections(conn, self.run_id, self.plan.job, self.rejections.rows)
        if self._dropped and self.plan.shadow is not None:
            shadow = self.plan.shadow
            conn.execute(sa.delete(shadow).where(shadow.c.run_id == self.run_id,
                                                 shadow.c[SHADOW_COLUMN].in_(sorted(self._dropped))))
        ledger.finish_run(conn, self.run_id, drift_status=self.drift_status, **self.counts)

    def _comparison_rows(self) -> list[dict[str, object]]:
        """One row per challenger; a failed one has its error and no figures (none of its
        rows are published)."""
        versions = {c.label: c.stamp.version for c in self.plan.challengers}
        versions.update({f.label: f.version for f in self.plan.failed_challengers})
        rows: list[dict[str, object]] = []
        for label, comp in self.comparisons.items():
            ok = not comp.error
            rows.append({
                "run_id": self.run_id, "job": self.plan.job, "challenger": label, "model_version": versions[label],
                "rows": comp.rows if ok else 0, "label_agreement": comp.label_agreement if ok else None,
                "mean_abs_score_diff": comp.mean_abs_score_diff if ok else None,
                "max_abs_score_diff": comp.abs_diff_max if ok else None, "error": comp.error,
            })
        return rows

    def _model_fields(self) -> dict[str, object]:
        stamp = self.plan.champion.stamp
        return {"model_version": stamp.version, "model_name": stamp.name,
                "model_registry_version": stamp.registry_version}

    def record_failure(self, exc: BaseException) -> RunResult:
        """Roll back, record the run ``failed`` (with its rejected rows), and say why."""
        with contextlib.suppress(Exception):
            self.publication.abort()
        plan = self.plan
        if isinstance(exc, TooManyBadRows) and exc is not self.error:
            self._count_bad_chunk(exc)
        self.counts["rows_rejected"] = len(self.rejections)
        exc = _translated(self.engine, plan, exc)
        reason = error_text(exc)
        # Keep a failed run's rejected rows for debugging, unless the database
        # or the user (a signal) is why it failed: then only the ledger row.
        if self.rejections.rows and isinstance(exc, BatchScorerError) and not isinstance(exc, DatabaseError):
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                _save_rejections(self.engine, self.run_id, plan.job, self.rejections.rows)
        alerted = "alert" if self.monitor is not None and self.monitor.alerted else None
        try:
            ledger.fail_run(self.engine, self.run_id, reason, drift_status=alerted, **self.counts)
        except sa.exc.SQLAlchemyError as ledger_exc:
            # E.g. the server is gone: one line, not a traceback; the next run
            # of the job finds the row still 'running' and marks it abandoned.
            log.error("job %s run %d: could not record the run as failed (%s); the next run will mark "
                      "it abandoned", plan.job, self.run_id, mask_text(first_line(ledger_exc)))
        why = f" ({reason})" if isinstance(exc, KeyboardInterrupt) else ""
        log.info("job %s run %d as_of %s: failed after %.1fs%s", plan.job, self.run_id, plan.as_of,
                 time.monotonic() - self.started, why)
        if isinstance(exc, BatchScorerError):
            exc.run_id = self.run_id
        self.error = exc
        return from_exception(plan.job, plan.as_of, exc, run_id=self.run_id, output_table=plan.output_name,
                              seconds=time.monotonic() - self.started, drift_status=alerted, **self._model_fields(),
                              **self.counts)


def _spec(prepared: PreparedTable, constants: dict[str, object], plan: RunPlan) -> OutputSpec:
    return OutputSpec(prepared.table, constants, plan.source.key, prepared.unique_keys)


@dataclass
class GroupContext:
    """What the groups of one invocation share: the engine, the executor, hooks."""

    engine: Engine
    executor: Executor
    skip_if: SkipCheck | None = None
    on_progress: ProgressFn | None = None
    # Record a lost lock as a `skipped` ledger row (run, cron, backfill); the
    # daemon does not: it waits and retries, or finds the fire done.
    record_lock_skips: bool = True
    # Output tables whose statistics this command refreshed for downstream jobs.
    analyzed: set[str] = field(default_factory=set)


def stream_spec(plans: Sequence[RunPlan]) -> StreamSpec:
    """The one read a group of plans (same source rows) shares."""
    first = plans[0]
    return StreamSpec(
        source=first.source.merged([p.source for p in plans[1:]], job=", ".join(p.job for p in plans)),
        as_of=first.as_of,
        columns=tuple(dict.fromkeys(c for p in plans for c in p.read_columns)),
        features=tuple(dict.fromkeys(f for p in plans for s in p.scorers for f in s.model.features)),
        chunk_size=first.settings.chunk_size,
    )


def run_group(ctx: GroupContext, plans: Sequence[RunPlan]) -> list[Attempt]:
    """Run plans that read the same source rows with one read (module doc).

    An interrupt (a signal) leaves with the attempts made so far as its ``attempts``:
    the jobs of the group that published before it are still reported."""
    attempts: list[Attempt] = []
    try:
        _run_group(ctx, plans, attempts)
    except BaseException as exc:
        if not isinstance(exc, Exception):
            exc.attempts = list(attempts)  # type: ignore[attr-defined]
        raise
    return attempts


def _run_group(ctx: GroupContext, plans: Sequence[RunPlan], attempts: list[Attempt]) -> None:
    with contextlib.ExitStack() as held:
        runs = _start(ctx, plans, held, attempts)
        if runs:
            try:
                ctx.executor.stream(ctx.engine, stream_spec([r.plan for r in runs]), runs)
            except BaseException as exc:
                for run in runs:
                    if run.alive:
                        run.fail(exc)
                if not isinstance(exc, Exception):  # an interrupt: record, then stop
                    attempts += [Attempt(r.plan, r.record_failure(exc), exc) for r in runs]
                    raise
            for run in runs:
                if run.alive:
                    attempts.append(Attempt(run.plan, run.publish(), run.error))
                else:
                    attempts.append(Attempt(run.plan, run.record_failure(run.error), run.error))  # type: ignore[arg-type]


def _start(ctx: GroupContext, plans: Sequence[RunPlan], held: contextlib.ExitStack,
           attempts: list[Attempt]) -> list[JobRun]:
    """Lock, check "already done", open the ledger rows, stage: the group's JobRuns (the
    others recorded). The jobs' locks are taken together and their ledger rows opened
    together (a transaction for the group, not two per job)."""
    engine = ctx.engine
    try:
        got = held.enter_context(locks.job_locks_held(engine, [p.job for p in plans]))
    except Exception as exc:  # noqa: BLE001 - e.g. the SQLite file locked: these jobs fail
        _fail_all(ctx, plans, exc, attempts)
        return []
    ready: list[tuple[RunPlan, locks.JobLock]] = []
    for plan in plans:
        lock = got[plan.job]
        if isinstance(lock, LockHeld):
            _lock_skipped(ctx, plan, lock, attempts)
        elif not _already_done(ctx, plan, attempts):
            ready.append((plan, lock))
    try:
        run_ids = ledger.start_runs(engine, [_run_start(plan) for plan, _ in ready])
    except Exception as exc:  # noqa: BLE001 - e.g. the ledger unwritable: these jobs fail
        _fail_all(ctx, [plan for plan, _ in ready], exc, attempts)
        return []
    runs: list[JobRun] = []
    for (plan, lock), run_id in zip(ready, run_ids, strict=True):
        try:
            runs.append(JobRun(plan, engine, run_id, lock, ctx.on_progress))
        except BaseException as exc:
            attempts.append(Attempt(plan, _fail_unstarted(engine, plan, run_id, exc), exc))
            if not isinstance(exc, Exception):
                raise
    return runs


def _fail_all(ctx: GroupContext, plans: Sequence[RunPlan], exc: Exception, attempts: list[Attempt]) -> None:
    for plan in plans:
        attempts.append(Attempt(plan, from_exception(plan.job, plan.as_of, _translated(ctx.engine, plan, exc)), exc))


def _lock_skipped(ctx: GroupContext, plan: RunPlan, exc: LockHeld, attempts: list[Attempt]) -> None:
    holder = f"run {exc.holder_run_id}" if exc.holder_run_id else "another process"
    log.info("job %s as_of %s: skipped: its lock is held by %s", plan.job, plan.as_of, holder)
    run_id = _record(ctx.engine, plan, RunStatus.SKIPPED, str(exc)) if ctx.record_lock_skips else None
    attempts.append(Attempt(plan, from_exception(plan.job, plan.as_of, exc, run_id=run_id), exc))


def _already_done(ctx: GroupContext, plan: RunPlan, attempts: list[Attempt]) -> bool:
    reason = ctx.skip_if(plan) if ctx.skip_if is not None else None
    if reason:
        log.info("job %s as_of %s: not run: %s", plan.job, plan.as_of, reason)
        attempts.append(Attempt(plan, RunResult(plan.job, Status.ALREADY_DONE, plan.as_of,
                                                model_version=plan.champion.stamp.version,
                                                output_table=plan.output_name, error=reason)))
    return bool(reason)


def _run_start(plan: RunPlan) -> ledger.RunStart:
    return ledger.RunStart(job=plan.job, model=plan.champion.stamp, as_of=plan.as_of, trigger=plan.trigger,
                           output_table=plan.output_name)


def _translated(engine: Engine, plan: RunPlan, exc: BaseException) -> BaseException:
    if is_lock_wait_timeout(exc):
        return DatabaseError(f"job {plan.job!r}: {_locked_text(engine)}")
    return exc


def _fail_unstarted(engine: Engine, plan: RunPlan, run_id: int, exc: BaseException) -> RunResult:
    reason = error_text(exc)
    with contextlib.suppress(sa.exc.SQLAlchemyError):
        ledger.fail_run(engine, run_id, reason)
    if isinstance(exc, BatchScorerError):
        exc.run_id = run_id
    return from_exception(plan.job, plan.as_of, exc, run_id=run_id, output_table=plan.output_name)


def _record(engine: Engine, plan: RunPlan, status: RunStatus, error: str) -> int | None:
    try:
        return ledger.record_attempt(engine, job=plan.job, as_of=plan.as_of, trigger=plan.trigger,
                                     status=status, error=error, model=plan.champion.stamp,
                                     output_table=plan.output_name)
    except sa.exc.SQLAlchemyError:
        log.debug("job %s: could not record the %s attempt", plan.job, status, exc_info=True)
        return None


def _check_outcome(plan: RunPlan, counts: dict[str, int], rejections: Rejections) -> None:
    read, scored = counts["rows_read"], counts["rows_scored"]
    limit = plan.settings.max_rejected_fraction
    if read and len(rejections) / read > limit:
        reasons = "; ".join(f"{r} ({n})" for r, n in rejections.top_reasons())
        raise RunFailed(
            f"job {plan.job!r}: {len(rejections)} of {read} rows could not be scored, above "
            f"max_rejected_fraction {limit}; nothing was published. Top reasons: {reasons}."
        )
    if scored == 0 and not plan.settings.allow_empty:
        what = "returned no rows" if read == 0 else f"returned {read} rows but none could be scored"
        raise RunFailed(
            f"job {plan.job!r}: the source {what} for as_of {plan.as_of}; published "
            "predictions were left as they are. If an empty result is expected, set "
            "allow_empty: true on the job."
        )


def _check_duplicate_keys(conn: Connection, output: OutputSpec, plan: RunPlan) -> None:
    """For an output table whose key index is not unique: the run's rows, by query."""
    table = output.table
    dupes = duplicate_keys(conn, [table.c[k] for k in output.keys], [table.c.run_id == output.constants["run_id"]])
    if dupes.count:
        raise _duplicates_failure(plan, dupes)


def _duplicates_error(engine: Engine, plan: RunPlan, exc: sa.exc.IntegrityError) -> BaseException:
    """The output table's unique key index refused a row: name the source's duplicate keys."""
    try:
        with engine.connect() as conn:
            dupes = source.duplicate_source_keys(conn, plan.source, plan.as_of)
    except sa.exc.SQLAlchemyError:
        log.debug("job %s: counting the source's duplicate keys failed", plan.job, exc_info=True)
        return exc
    return _duplicates_failure(plan, dupes) if dupes.count else exc


def _duplicates_failure(plan: RunPlan, dupes: DuplicateKeys) -> RunFailed:
    examples = ", ".join(f"{json.dumps(k, default=str)} ({n} rows)" for k, n in dupes.examples)
    return RunFailed(
        f"job {plan.job!r}: the source has {dupes.count} key(s) that occur more than once "
        f"for as_of {plan.as_of} ({dupes.rows} rows), e.g. {examples}; nothing was published. "
        f"Each {', '.join(plan.source.key)} must appear once per as_of: deduplicate the "
        "source (e.g. in the query) or add the missing column to source.key."
    )


def _locked_text(engine: Engine) -> str:
    if engine.dialect.name != "sqlite":
        return (
            "another session holds a lock this run's write needs (an open transaction in a "
            "notebook, psql or a BI tool?); the run waited database.busy_timeout_seconds and gave "
            "up, nothing was published. Find the session with SELECT pid, state, xact_start, query "
            "FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'; let it commit or roll "
            "back (or pg_terminate_backend(pid)), or raise database.busy_timeout_seconds."
        )
    return (
        "database is locked by another writer: this run waited "
        "database.busy_timeout_seconds for the write lock on the SQLite file "
        f"{engine.url.database} and gave up. Another process (a sqlite3 shell, a tool with "
        "an open write transaction) holds a write transaction; let it finish, or raise "
        "database.busy_timeout_seconds."
    )


def _save_rejections(engine: Engine, run_id: int, job: str, rows: list[tuple[str, str]]) -> None:
    """Rejected rows in their own transaction (batches flushed during the run)."""
    with begin_write(engine) as conn:
        _insert_rejections(conn, run_id, job, rows)


def _insert_rejections(conn: Connection, run_id: int, job: str, rows: list[tuple[str, str]]) -> None:
    if rows:
        conn.execute(rejected_rows.insert(), [{"run_id": run_id, "job": job, "key": k, "reason": r} for k, r in rows])
