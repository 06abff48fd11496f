"""Every query on ``feature_profiles``, ``drift`` and ``model_metrics``, and the reads of
published predictions that ``evaluate`` joins its labels to.

Rows go in and come out as plain dicts (the monitoring math turns them into
profiles); this module knows tables, not PSI.

* A profile is the rows of one ``profile_id``: ``run:<run_id>`` for a run's own
  (written in the run's publish transaction, :func:`run_profile_id`), or
  ``reference:<model name>:<version>`` for one given when a model version was
  registered (:func:`reference_profile_id`, :func:`replace_reference`).
* The reference of a run (:func:`find_reference`): the registered model version's
  reference profile if there is one, else the profile of the job's first
  succeeded run of the same model bytes (``scoring_runs.model_sha256``).
* The previous profile (:func:`previous_profile`): the job's latest published run
  of an earlier as_of that has a profile.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from batch_scorer.names import split_table_name
from batch_scorer.storage.catalog import catalog
from batch_scorer.storage.db import begin_write, driver_rows
from batch_scorer.storage.schema import (
    RunStatus,
    drift,
    feature_profiles,
    model_metrics,
    scoring_runs,
    shadow_comparisons,
)

RUN_PREFIX = "run:"
REFERENCE_PREFIX = "reference:"
# What a stored profile row holds (besides who it belongs to).
PROFILE_COLUMNS = ("feature", "kind", "bin", "lower", "upper", "category", "rows")
DRIFT_COLUMNS = ("run_id", "as_of", "model_version", "feature", "psi_reference", "psi_previous", "status",
                 "reference_profile", "previous_run_id")
METRIC_COLUMNS = ("as_of", "model_version", "role", "challenger", "metric", "value", "rows", "evaluated_at")


def run_profile_id(run_id: int) -> str:
    """``run:<run_id>``: the profile a run stores of its own rows."""
    return f"{RUN_PREFIX}{int(run_id)}"


def reference_profile_id(model_name: str, version: int | str) -> str:
    """``reference:<name>:<version>``: the profile given when a model version was registered."""
    return f"{REFERENCE_PREFIX}{model_name}:{version}"


@dataclass(frozen=True)
class StoredProfile:
    """One stored profile: its id, the run it belongs to (None for a registered one), its rows."""

    profile_id: str
    run_id: int | None
    rows: list[tuple[Any, ...]]  # in PROFILE_COLUMNS order


def has_monitoring_tables(engine: Engine) -> bool:
    """Whether the monitoring tables exist yet (they are created with the ledger by the first
    run); from the engine's catalog (one reflection per engine, not one per job)."""
    return catalog(engine).has_table(feature_profiles.name)


def profile_rows(conn: Connection, profile_id: str, feature: str | None = None) -> list[dict[str, Any]]:
    """The rows of one profile (:data:`PROFILE_COLUMNS`; of one ``feature`` if given), in
    feature and bin order."""
    t = feature_profiles.c
    where = [t.profile_id == profile_id, *([t.feature == feature] if feature is not None else [])]
    return [dict(zip(PROFILE_COLUMNS, row, strict=True)) for row in _profiles_where(conn, *where).get(profile_id, [])]


def profiles_by_id(conn: Connection, profile_ids: Iterable[str]) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of many profiles (as :func:`profile_rows` gives one, as tuples in
    :data:`PROFILE_COLUMNS` order), by profile id: a few queries however many profiles;
    an id with no rows is absent."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for part in _parts(sorted(set(profile_ids))):
        out.update(_profiles_where(conn, feature_profiles.c.profile_id.in_(part)))
    return out


def _profiles_where(conn: Connection, *where: sa.ColumnElement[bool]) -> dict[str, list[tuple[Any, ...]]]:
    """The profile rows matching ``where`` (tuples in :data:`PROFILE_COLUMNS` order), by
    profile id, each profile in feature and bin order."""
    t = feature_profiles.c
    stmt = (sa.select(t.profile_id, *(t[c] for c in PROFILE_COLUMNS)).where(*where)
            .order_by(t.profile_id, t.feature, t.bin))
    out: dict[str, list[tuple[Any, ...]]] = {}
    for row in driver_rows(conn, stmt):  # a fleet's planning reads ~100,000 of them
        out.setdefault(row[0], []).append(row[1:])
    return out


def _parts(values: Sequence[Any], size: int = 500) -> Iterator[list[Any]]:
    """``values`` in lists of at most ``size`` (bound parameters per statement stay few)."""
    for i in range(0, len(values), size):
        yield list(values[i:i + size])


def _has_profile(run: Any) -> sa.ColumnElement[bool]:
    return sa.exists().where(feature_profiles.c.run_id == run.run_id)


def _is_reference_candidate(r: Any) -> list[sa.ColumnElement[bool]]:
    """A run whose profile can be a reference: succeeded, with a profile (the first such run
    of a job's model bytes is the reference of that model's runs)."""
    return [r.status == RunStatus.SUCCEEDED, r.model_sha256.is_not(None), _has_profile(r)]


def _is_previous_candidate(r: Any, as_of: date) -> list[sa.ColumnElement[bool]]:
    """A run a run of ``as_of`` can compare with: published (succeeded, not replaced), of
    an earlier as_of, with a profile (the latest such run is the previous one)."""
    return [r.status == RunStatus.SUCCEEDED, r.replaced_by.is_(None), r.as_of < as_of, _has_profile(r)]


# One type object for every literal of a batched lookup: SQLAlchemy makes a type's part of
# the statement's cache key once per object (200 jobs' pairs: 3.9 -> 2.4 ms per statement).
_TEXT = sa.String()


def _rows_of(values: Sequence[tuple[str, ...]], names: tuple[str, ...]) -> sa.Subquery:
    """Literal rows (bound parameters) as a table ``w`` with columns ``names``: the jobs a
    batched lookup is for, each looked up through the ledger's indexes by a correlated
    subquery (a window or GROUP BY over every job's whole history costs more on a long ledger)."""
    selects = [sa.select(*(sa.literal(v, _TEXT).label(n) for v, n in zip(row, names, strict=True)))
               for row in values]
    return (selects[0] if len(selects) == 1 else sa.union_all(*selects)).subquery("w")


def first_runs_of(conn: Connection, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """``{(job, model sha256): run_id}``: for each pair, the job's first reference candidate
    run of those model bytes, whose profile is the reference of the runs of those bytes
    (when the model version has no registered one). A query per 250 pairs."""
    r = scoring_runs.alias("r").c
    out: dict[tuple[str, str], int] = {}
    for part in _parts(sorted(set(pairs)), 250):  # SQLite allows 500 terms in a UNION
        w = _rows_of(part, ("job", "sha256"))
        first = (sa.select(sa.func.min(r.run_id))
                 .where(r.job == w.c.job, r.model_sha256 == w.c.sha256, *_is_reference_candidate(r))
                 .scalar_subquery())
        rows = conn.execute(sa.select(w.c.job, w.c.sha256, first))
        out.update({(str(job), str(sha)): int(run) for job, sha, run in rows if run is not None})
    return out


def latest_profiled_runs(conn: Connection, jobs: Iterable[str], as_of: date) -> dict[str, int]:
    """``{job: run_id}``: each job's latest previous candidate run for a run of ``as_of``
    (latest as_of, then latest run): the run it compares with. A query per 250 jobs."""
    r = scoring_runs.alias("r").c
    out: dict[str, int] = {}
    for part in _parts(sorted(set(jobs)), 250):
        w = _rows_of([(job,) for job in part], ("job",))
        latest = (sa.select(r.run_id).where(r.job == w.c.job, *_is_previous_candidate(r, as_of))
                  .order_by(r.as_of.desc(), r.run_id.desc()).limit(1).scalar_subquery())
        out.update({str(job): int(run) for job, run in conn.execute(sa.select(w.c.job, latest)) if run is not None})
    return out


@dataclass(frozen=True)
class ProfileWant:
    """Which profiles one run compares with: the job, its model's bytes, its registry
    version if it has one, and its as_of (None: no previous profile wanted)."""

    job: str
    sha256: str
    model_name: str | None = None
    registry_version: int | None = None
    as_of: date | None = None

    @property
    def registered_id(self) -> str | None:
        if self.model_name is None or self.registry_version is None:
            return None
        return reference_profile_id(self.model_name, self.registry_version)


def reference_and_previous(
    conn: Connection, wants: Sequence[ProfileWant],
) -> list[tuple[StoredProfile | None, StoredProfile | None]]:
    """Each run's reference profile and previous profile (module doc), or None where there is
    none yet: for many runs in a few queries (the runs of a fleet's batch are planned together).

    The reference is the registered model version's profile when it has one, else the
    profile of :func:`first_runs_of`; the previous one is :func:`latest_profiled_runs`'s."""
    if conn.dialect.name == "postgresql":
        # Many small index probes whose summed cost estimate would switch JIT compilation
        # on: it costs more than the probes (600 ms for 200 jobs on a two-year ledger).
        conn.exec_driver_sql("SET LOCAL jit = off")
    first = first_runs_of(conn, ((w.job, w.sha256) for w in wants))
    previous: dict[tuple[str, date], int] = {}
    for day in {w.as_of for w in wants if w.as_of is not None}:
        jobs = {w.job for w in wants if w.as_of == day}
        previous.update({(job, day): run for job, run in latest_profiled_runs(conn, jobs, day).items()})
    firsts = {w: first.get((w.job, w.sha256)) for w in wants}
    prevs = {w: previous.get((w.job, w.as_of)) if w.as_of is not None else None for w in wants}
    ids = [i for w in wants if (i := w.registered_id) is not None]
    ids += [run_profile_id(run) for run in (*firsts.values(), *prevs.values()) if run is not None]
    rows = profiles_by_id(conn, ids)

    def stored(profile_id: str | None, run_id: int | None) -> StoredProfile | None:
        found = rows.get(profile_id) if profile_id is not None else None
        return StoredProfile(profile_id, run_id, found) if found and profile_id is not None else None

    def reference(w: ProfileWant) -> StoredProfile | None:
        run = firsts[w]
        return stored(w.registered_id, None) or (stored(run_profile_id(run), run) if run is not None else None)

    return [(reference(w), stored(run_profile_id(prevs[w]), prevs[w]) if prevs[w] is not None else None)
            for w in wants]


def find_reference(
    conn: Connection, *, job: str, sha256: str, model_name: str | None = None, registry_version: int | None = None,
) -> StoredProfile | None:
    """The reference profile of a run (module doc), or None when there is none yet."""
    return reference_and_previous(conn, [ProfileWant(job, sha256, model_name, registry_version)])[0][0]


def reference_runs(conn: Connection, job: str) -> list[int]:
    """The runs of ``job`` whose profile is a reference (its first profiled succeeded run
    of each model sha256, as :func:`find_reference` picks it): kept by prune, so that the
    baseline a model's runs compare with never moves."""
    r = scoring_runs.c
    query = (sa.select(sa.func.min(r.run_id)).where(r.job == job, *_is_reference_candidate(r))
             .group_by(r.model_sha256))
    return sorted(int(run) for run in conn.execute(query).scalars())


def cited_references(conn: Connection, job: str) -> list[int]:
    """The runs of ``job`` whose profile another run's drift rows name as their reference
    (``drift.reference_profile``): kept by prune while those rows are, so that no drift
    row points at a profile that is gone (a retracted first run stops being a reference
    for new runs, but the runs made before keep comparing with it)."""
    d = drift.c
    own = sa.literal(RUN_PREFIX) + sa.cast(d.run_id, sa.String)
    query = (sa.select(d.reference_profile).where(d.job == job, d.reference_profile.like(f"{RUN_PREFIX}%"),
                                                  d.reference_profile != own).distinct())
    return sorted(int(str(pid)[len(RUN_PREFIX):]) for pid in conn.execute(query).scalars())


def previous_profile(conn: Connection, *, job: str, as_of: date) -> StoredProfile | None:
    """The profile of the job's latest published run of an earlier as_of (module doc)."""
    run = latest_profiled_runs(conn, [job], as_of).get(job)
    if run is None:
        return None
    rows = profiles_by_id(conn, [run_profile_id(run)]).get(run_profile_id(run))
    return StoredProfile(run_profile_id(run), run, rows) if rows else None


def replace_reference(
    engine: Engine, profile_id: str, model_name: str, model_version: str, rows: Iterable[Mapping[str, Any]],
) -> int:
    """Store a registered model version's reference profile, replacing an earlier one of the
    same id, in one transaction; returns the rows written."""
    values = [{**{c: row[c] for c in PROFILE_COLUMNS}, "profile_id": profile_id, "run_id": None, "job": None,
               "model_name": model_name, "model_version": model_version} for row in rows]
    with begin_write(engine) as conn:
        conn.execute(sa.delete(feature_profiles).where(feature_profiles.c.profile_id == profile_id))
        if values:
            conn.execute(feature_profiles.insert(), values)
    return len(values)


def drift_rows(conn: Connection, run_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The drift rows (:data:`DRIFT_COLUMNS`) of these runs, in run and feature order."""
    if not run_ids:
        return []
    d = drift.c
    stmt = (sa.select(*(d[c] for c in DRIFT_COLUMNS)).where(d.run_id.in_(list(run_ids)))
            .order_by(d.run_id, d.feature))
    result = conn.execute(stmt)
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result]


def metric_rows(conn: Connection, job: str) -> list[dict[str, Any]]:
    """Every ``model_metrics`` row of a job (:data:`METRIC_COLUMNS`), in as_of order."""
    m = model_metrics.c
    stmt = sa.select(*(m[c] for c in METRIC_COLUMNS)).where(m.job == job).order_by(m.as_of, m.id)
    result = conn.execute(stmt)
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result]


def replace_metrics(engine: Engine, job: str, as_ofs: Sequence[date], rows: Sequence[Mapping[str, Any]]) -> None:
    """A job's figures for these as_ofs, replacing the ones evaluated before (one transaction)."""
    with begin_write(engine) as conn:
        if as_ofs:
            conn.execute(sa.delete(model_metrics).where(model_metrics.c.job == job,
                                                        model_metrics.c.as_of.in_(list(as_ofs))))
        if rows:
            conn.execute(model_metrics.insert(), [{**row, "job": job} for row in rows])


def delete_metrics(conn: Connection, job: str, as_of: date) -> int:
    """Forget a job's figures of one as_of (its published predictions were taken back);
    returns the rows deleted (0 when there is no ``model_metrics`` table yet)."""
    if not sa.inspect(conn).has_table(model_metrics.name):
        return 0
    m = model_metrics.c
    return int(conn.execute(sa.delete(model_metrics).where(m.job == job, m.as_of == as_of)).rowcount or 0)


def output_tables(conn: Connection, name: str, shadow_name: str) -> tuple[sa.Table | None, sa.Table | None]:
    """An output table and its ``_shadow`` twin as they exist in the database (None: missing)."""
    return _reflect(conn, name), _reflect(conn, shadow_name)


def _reflect(conn: Connection, name: str) -> sa.Table | None:
    schema, table = split_table_name(name)
    if not sa.inspect(conn).has_table(table, schema=schema):
        return None
    return sa.Table(table, sa.MetaData(), schema=schema, autoload_with=conn)


def prediction_as_ofs(conn: Connection, table: sa.Table, job: str) -> list[date]:
    """The as_of dates a job has published predictions for in ``table``, oldest first."""
    stmt = sa.select(table.c.as_of).where(table.c.job == job).distinct().order_by(table.c.as_of)
    return [_as_date(v) for v in conn.execute(stmt).scalars()]


def pruned_as_ofs(conn: Connection, table: sa.Table, job: str) -> set[date]:
    """The job's as_ofs whose rows in ``table`` are fewer than the run that published them
    wrote (``prune`` removed those no longer shown by ``_latest``)."""
    t, r = table.c, scoring_runs.c
    counts = (sa.select(t.as_of, t.run_id, sa.func.count().label("n")).where(t.job == job)
              .group_by(t.as_of, t.run_id).subquery("published"))
    stmt = (sa.select(counts.c.as_of).join(scoring_runs, r.run_id == counts.c.run_id)
            .where(counts.c.n < r.rows_scored).distinct())
    return {_as_date(v) for v in conn.execute(stmt).scalars()}


def read_predictions(conn: Connection, table: sa.Table, job: str, as_of: date, keys: Sequence[str]) -> pd.DataFrame:
    """A job's published rows of one as_of: keys, ``model_version``, ``prediction``, ``score``
    (and ``challenger``, ``run_id`` from a shadow table)."""
    extra = ["challenger", "run_id"] if "challenger" in table.c else []
    columns = [*(table.c[k] for k in keys), table.c.model_version, table.c.prediction, table.c.score,
               *(table.c[c] for c in extra)]
    stmt = sa.select(*columns).where(table.c.job == job, table.c.as_of == as_of)
    result = conn.execute(stmt)
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def challenger_versions(conn: Connection, run_ids: Sequence[int]) -> dict[tuple[int, str], str]:
    """``{(run_id, challenger label): model version}`` from ``shadow_comparisons`` (the same
    version as the challenger's shadow rows carry in their ``model_version``)."""
    if not run_ids:
        return {}
    c = shadow_comparisons.c
    stmt = sa.select(c.run_id, c.challenger, c.model_version).where(c.run_id.in_([int(r) for r in run_ids]))
    return {(int(r), str(label)): str(v) for r, label, v in conn.execute(stmt) if v is not None}


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
