"""The Dask executor: a run scored across a cluster is the local run, row by row, with
the same guarantees (all or nothing, no duplicates, model pinned, no password leaked).

One LocalCluster of 2 worker processes (1 thread each) serves the module; runs reach
it through ``executor.address``, as they would a remote scheduler. Its workers get the
password of a role created here in their environment (``PGPASSWORD``), as an operator
would set it on worker hosts. Everything runs on the real PostgreSQL.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import pytest
import sqlalchemy as sa

from batch_scorer.config import load_config
from batch_scorer.core.checks import TooManyBadRows
from batch_scorer.errors import RunFailed
from batch_scorer.executors.dask import WORKER_URL_ENV, Failure, partition_count, worker_url
from batch_scorer.runtime.jobs import Invocation, run_jobs
from batch_scorer.runtime.spec import RunPlan
from batch_scorer.storage.db import create_engine
from tests.faults_support import Run, app_url, run_counting_sessions, sessions, unique_name
from tests.gaps_support import poll
from tests.helpers import AS_OF, cli_run, features_frame, job, load_table, query, save_model, train, write_config
from tests.test_speed_fast_path import PASS, _rows, _source_table

if os.environ.get("CI"):
    import distributed  # the test extra installs it: a missing one fails, never skips
else:
    distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.postgres
PASSWORD = f"pw-{uuid.uuid4().hex}"


@dataclass
class Cluster:
    """The module's cluster, the test's client of it, and the password role its workers know."""

    address: str
    client: Any
    role: str

    def ready(self) -> None:
        """Both workers up (a test may have killed one; its nanny restarts it)."""
        self.client.wait_for_workers(2, timeout=60)


def _sql(url: str, *statements: str) -> None:
    engine = create_engine(url)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def cluster(pg_base_url: str) -> Iterator[Cluster]:
    role = f"bs_dask_{uuid.uuid4().hex[:8]}"
    _sql(pg_base_url, f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
    local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     dashboard_address=":0", env={"PGPASSWORD": PASSWORD})
    client = distributed.Client(local, set_as_default=False)
    client.run(importlib.import_module, "batch_scorer.executors.dask")  # the first test pays no imports
    try:
        yield Cluster(local.scheduler_address, client, role)
    finally:
        client.close()
        local.close()
        _sql(pg_base_url, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


def _dask(cluster: Cluster, **extra: Any) -> dict[str, Any]:
    return {"executor": {"kind": "dask", "address": cluster.address, **extra}}


def _as_role(url: str, role: str, password: str | None = None) -> str:
    return sa.engine.make_url(url).set(username=role, password=password).render_as_string(hide_password=False)


def _schema(url: str) -> str:
    return str(sa.engine.make_url(url).query["options"]).split("=", 1)[1]


# --- the same rows as a local run ---------------------------------------------------


def _composite_source(url: str, folder: Path, kind: str) -> Path:
    """The fast-path table (composite text+int key, every pass-through type) plus rows with
    a NULL in either key column (rejected, once), and the model file."""
    engine = create_engine(url)
    md = sa.MetaData()
    table = _source_table(md, with_tz=True)
    rows = _rows(300, with_tz=True)
    rows += [dict(rows[0], region=None, entity_id=9001), dict(rows[1], region="north", entity_id=None)]
    try:
        md.create_all(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), rows)
    finally:
        engine.dispose()
    return save_model(train(kind), folder / "m.joblib")


def _job(model: Path, output: str) -> dict[str, Any]:
    return {"model": {"path": str(model)},
            "source": {"table": "features", "key": ["region", "entity_id"], "as_of_column": "snapshot_date"},
            "output": {"table": output, "pass_through": [*PASS, "seen_tz"]},
            "chunk_size": 37, "max_rejected_fraction": 0.05}


def _published(url: str, table: str) -> list[tuple[Any, ...]]:
    cols = ", ".join(["region", "entity_id", *PASS, "seen_tz", "prediction", "score", "as_of", "model_version"])
    return query(url, f"SELECT {cols} FROM {table} ORDER BY region, entity_id")


def _rejected(url: str, output: str) -> list[tuple[Any, ...]]:
    return query(url, "SELECT r.key, r.reason FROM rejected_rows r JOIN scoring_runs s USING (run_id) "
                      "WHERE s.output_table = :t ORDER BY r.key", t=output)


@pytest.mark.parametrize("kind", ["binary", "forest"], ids=["light", "heavy"])
def test_a_dask_run_publishes_exactly_the_rows_of_a_local_run(
    cluster: Cluster, pg_url: str, tmp_path: Path, kind: str
) -> None:
    """Composite key, NULL keys, every pass-through type, 5 partitions of chunks of 37 rows."""
    cluster.ready()
    model = _composite_source(pg_url, tmp_path, kind)
    (tmp_path / "local").mkdir()
    (tmp_path / "dask").mkdir()
    local = write_config(tmp_path / "local", pg_url, {"churn": _job(model, "pred_local")})
    on_dask = write_config(tmp_path / "dask", pg_url, {"churn": _job(model, "pred_dask")},
                           **_dask(cluster, partitions=5))
    for config in (local, on_dask):
        result = cli_run(config, "run", "churn", "--as-of", AS_OF.isoformat())
        assert result.exit_code == 0, result.output

    expected = _published(pg_url, "pred_local")
    assert len(expected) == 300
    assert _published(pg_url, "pred_dask") == expected
    assert len(_rejected(pg_url, "pred_dask")) == 2
    assert _rejected(pg_url, "pred_dask") == _rejected(pg_url, "pred_local")
    assert query(pg_url, "SELECT rows_read, rows_scored, rows_rejected FROM scoring_runs ORDER BY run_id") == [
        (302, 300, 2), (302, 300, 2)]
    # Drift profiles are observed on the workers and merged by the driver: the same
    # bins as the local run's (which is the reference, so every PSI is 0).
    bins = "SELECT feature, bin, lower, upper, category, rows FROM feature_profiles WHERE run_id = :r ORDER BY 1, 2, 5"
    assert query(pg_url, bins, r=2) == query(pg_url, bins, r=1) != []
    assert query(pg_url, "SELECT DISTINCT psi_reference FROM drift WHERE run_id = 2") == [(0.0,)]


# --- faults ---------------------------------------------------------------------------

ROWS = 8_000


def _big_job(url: str, folder: Path, **top: Any) -> Path:
    load_table(url, features_frame(ROWS, seed=9))
    save_model(train("forest"), folder / "models" / "m.joblib")
    return write_config(folder, url, {"j": job(pass_through=["note"], chunk_size=500)}, **top)


def _no_duplicates(url: str) -> None:
    assert query(url, "SELECT count(*) - count(DISTINCT entity_id) FROM predictions") == [(0,)]


def test_a_worker_killed_mid_run_never_duplicates_or_half_publishes(
    cluster: Cluster, pg_url: str, tmp_path: Path
) -> None:
    cluster.ready()
    config = _big_job(pg_url, tmp_path, **_dask(cluster, partitions=12))
    killed: list[int] = []

    def kill_a_worker(job_name: str, run_id: int, rows: int, seconds: float) -> None:
        if not killed and rows < ROWS:
            # scheduler_info() no longer lists worker pids: each worker says its own.
            pid = next(iter(cluster.client.run(os.getpid).values()))
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    cfg = load_config(config)
    engine = create_engine(pg_url)
    try:
        [result] = run_jobs(Invocation(cfg, engine, "manual", 1, on_progress=kill_a_worker), ["j"], AS_OF)
    finally:
        engine.dispose()

    assert killed, "no worker was killed during the run"
    _no_duplicates(pg_url)
    if result.status == "succeeded":
        assert query(pg_url, "SELECT count(*), count(DISTINCT run_id) FROM predictions") == [(ROWS, 1)]
        # The same rows as a local run of the same job.
        local = write_config(tmp_path, pg_url, {"j": job(pass_through=["note"], output="pred_local")})
        assert cli_run(local, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
        both = "SELECT entity_id, note, prediction, score FROM {} ORDER BY entity_id"
        assert query(pg_url, both.format("predictions")) == query(pg_url, both.format("pred_local"))
    else:
        assert query(pg_url, "SELECT count(*) FROM predictions") == [(0,)]
        assert query(pg_url, "SELECT status FROM scoring_runs") == [("failed",)]


def test_a_killed_driver_leaves_nothing_and_the_next_run_marks_it_abandoned(
    cluster: Cluster, pg_url: str, tmp_path: Path
) -> None:
    cluster.ready()
    config = _big_job(pg_url, tmp_path, **_dask(cluster, partitions=40))
    driver = Run(config, "run", "j", "--as-of", AS_OF.isoformat())
    driver.wait_for_rows()
    assert driver.proc.poll() is None, "the run finished before the driver could be killed"
    driver.proc.kill()
    assert driver.finish(timeout=30) == -signal.SIGKILL

    assert query(pg_url, "SELECT count(*) FROM predictions") == [(0,)]
    assert query(pg_url, "SELECT status FROM scoring_runs") == [("running",)]
    result = cli_run(config, "run", "j", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 0, result.output
    assert query(pg_url, "SELECT run_id, status FROM scoring_runs ORDER BY run_id") == [
        (1, "abandoned"), (2, "succeeded")]
    assert query(pg_url, "SELECT count(*), min(run_id), max(run_id) FROM predictions") == [(ROWS, 2, 2)]
    _no_duplicates(pg_url)


class _Marker:
    """Unpickling this creates the marker file: proof the bytes were unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_a_model_file_changed_after_planning_is_refused_on_the_workers_before_unpickling(
    cluster: Cluster, pg_url: str, tmp_path: Path
) -> None:
    """The plan loads the pinned file; it is then replaced before the run streams. The
    workers get the new bytes and refuse them: their sha256 is not the one the plan checked."""
    cluster.ready()
    config = _big_job(pg_url, tmp_path, **_dask(cluster, partitions=4))
    marker = tmp_path / "unpickled.marker"

    def swap_the_model(plan: RunPlan) -> None:
        joblib.dump(_Marker(marker), tmp_path / "models" / "m.joblib")

    engine = create_engine(pg_url)
    try:
        [result] = run_jobs(Invocation(load_config(config), engine, "manual", 1, skip_if=swap_the_model),
                            ["j"], AS_OF)
    finally:
        engine.dispose()

    assert result.exit_code == 2, result.error
    assert "refused on Dask worker" in (result.error or "") and "sha256" in (result.error or "")
    assert not marker.exists()
    assert query(pg_url, "SELECT count(*) FROM predictions") == [(0,)]
    assert query(pg_url, "SELECT status FROM scoring_runs") == [("failed",)]


# --- credentials ------------------------------------------------------------------------


def _texts(tasks: dict[Any, Any]) -> list[str]:
    """Each batch-scorer task's repr, its arguments' reprs and its pickled form."""
    out = []
    for key, ts in list(tasks.items()):
        spec = getattr(ts, "run_spec", None)
        if str(key).startswith("batch-scorer") and spec is not None:
            out += [repr(ts), repr(spec), *map(repr, getattr(spec, "args", ())),
                    pickle.dumps(spec).decode("latin-1")]
    return out


def _scheduler_tasks(dask_scheduler: Any) -> list[str]:
    return _texts(dask_scheduler.tasks)


def _worker_tasks(dask_worker: Any) -> list[str]:
    return _texts(dask_worker.state.tasks)


def test_the_password_never_reaches_the_tasks_the_scheduler_or_the_logs(
    cluster: Cluster, pg_url: str, tmp_path: Path
) -> None:
    """The driver connects as a role WITH PASSWORD; the workers find it in their own
    environment. Tasks, the scheduler's and the workers' logs never hold it."""
    cluster.ready()
    schema = _schema(pg_url)
    _sql(pg_url, f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO {cluster.role}')
    url = _as_role(pg_url, cluster.role, PASSWORD)
    config = _big_job(url, tmp_path, **_dask(cluster, partitions=8))
    seen: list[str] = []

    def look_at_the_tasks(job_name: str, run_id: int, rows: int, seconds: float) -> None:
        if seen:  # once, while the other partitions are in flight
            return
        seen.extend(cluster.client.run_on_scheduler(_scheduler_tasks))
        for texts in cluster.client.run(_worker_tasks).values():
            seen.extend(texts)

    engine = create_engine(url)
    try:
        [result] = run_jobs(Invocation(load_config(config), engine, "manual", 1, on_progress=look_at_the_tasks),
                            ["j"], AS_OF)
    finally:
        engine.dispose()

    assert result.status == "succeeded", result.error
    assert seen and any(f"{cluster.role}@" in text for text in seen), "no task was seen carrying the URL"
    logs = [str(cluster.client.get_scheduler_logs())]
    logs += [str(v) for v in cluster.client.get_worker_logs().values()]
    logs += [str(v) for v in cluster.client.get_worker_logs(nanny=True).values()]
    for text in [*seen, *logs]:
        assert PASSWORD not in text
    assert PASSWORD not in worker_url(sa.engine.make_url(url))[0]
    assert PASSWORD not in worker_url(sa.engine.make_url(f"{pg_url}&password={PASSWORD}"))[0]


def _set_env(name: str, value: str | None) -> None:
    """On a worker: set (or, with None, remove) one environment variable."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def test_a_read_only_worker_role_is_enough(cluster: Cluster, pg_url: str, tmp_path: Path) -> None:
    """Workers given their own URL (BATCH_SCORER_WORKER_DATABASE_URL) with a role that may
    only read the source table score the run; the driver writes."""
    cluster.ready()
    reader = f"bs_dask_ro_{uuid.uuid4().hex[:8]}"
    config = _big_job(pg_url, tmp_path, **_dask(cluster, partitions=4))
    schema = _schema(pg_url)
    _sql(pg_url, f"CREATE ROLE {reader} LOGIN", f'GRANT USAGE ON SCHEMA "{schema}" TO {reader}',
         f'GRANT SELECT ON "{schema}".features TO {reader}')
    cluster.client.run(_set_env, WORKER_URL_ENV, _as_role(pg_url, reader))
    try:
        result = cli_run(config, "run", "j", "--as-of", AS_OF.isoformat())
        assert result.exit_code == 0, result.output
        # The workers' fast readers keep their connection: the read-only role's.
        assert query(pg_url, "SELECT count(*) > 0 FROM pg_stat_activity WHERE usename = :r", r=reader) == [(True,)]
    finally:
        cluster.client.run(_set_env, WORKER_URL_ENV, None)
        _sql(pg_url, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{reader}'",
             f"DROP OWNED BY {reader}", f"DROP ROLE {reader}")
    assert query(pg_url, "SELECT count(*) FROM predictions") == [(ROWS,)]


# --- an in-process cluster, configuration ------------------------------------------------


def test_address_null_starts_an_in_process_cluster_for_the_run(
    pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    load_table(pg_url, features_frame(3_000, seed=4))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    config = write_config(tmp_path, pg_url, {"j": job()}, executor={"kind": "dask", "address": None})
    result = cli_run(config, "run", "j", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 0, result.output
    assert "started an in-process Dask cluster: 2 worker processes" in result.output
    assert "3000 rows in 4 partitions" in result.output  # 2 partitions per worker thread
    assert query(pg_url, "SELECT count(*) FROM predictions") == [(3_000,)]


def test_dask_with_a_sqlite_database_is_a_config_error(sqlite_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, sqlite_url, {"j": job()}, executor={"kind": "dask"})
    result = cli_run(config, "run", "j", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 2
    assert "executor.kind dask needs a PostgreSQL database.url" in result.output


def test_dask_without_the_extra_installed_names_the_extra(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # what `import distributed` meets without it
    load_table(pg_url, features_frame(10))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    config = write_config(tmp_path, pg_url, {"j": job()}, executor={"kind": "dask"})
    result = cli_run(config, "run", "j", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 2
    assert "pip install 'batch-scorer[dask]'" in result.output
    assert "Traceback" not in result.output
    assert query(pg_url, "SELECT to_regclass('scoring_runs') IS NULL") == [(True,)]  # nothing was planned


def test_a_job_failure_on_a_worker_reaches_the_driver_with_its_rejected_rows() -> None:
    """What a task hands back crosses a pickle: TooManyBadRows (whose constructor takes
    the rows) keeps them; an exception that does not pickle becomes its masked text."""

    class Unpicklable(Exception):  # a local class: pickle cannot name it
        pass

    too_many = pickle.loads(pickle.dumps(Failure.of(TooManyBadRows("job 'j': too many", [("{}", "bad")]))))
    error = too_many.exception()
    assert isinstance(error, TooManyBadRows) and error.rejected == [("{}", "bad")] and str(error) == "job 'j': too many"
    odd = pickle.loads(pickle.dumps(Failure.of(Unpicklable("at postgresql://u:secret@h/db"))))
    assert isinstance(odd.exception(), RunFailed)
    assert "Unpicklable" in str(odd.exception()) and "secret" not in str(odd.exception())


def test_partitions_are_about_250k_rows_and_at_least_two_per_worker_thread() -> None:
    assert partition_count(1_000, worker_threads=2) == 4
    assert partition_count(1_000_000, worker_threads=2) == 4
    assert partition_count(10_000_000, worker_threads=2) == 40
    assert partition_count(10_000_000, worker_threads=64) == 128
    assert partition_count(10_000_000, worker_threads=2, configured=7) == 7


# --- the connection budget ---------------------------------------------------------------


@pytest.mark.parametrize("jobs", [1, 3])
def test_the_connection_budget_of_a_dask_run_is_what_scale_out_md_says(
    cluster: Cluster, pg_url: str, tmp_path: Path, jobs: int
) -> None:
    """docs/scale-out.md ("The database's connection budget"), counted for real in
    ``pg_stat_activity`` (the run's sessions carry this test's ``application_name``):

    * the driver (this process): two per job (its lock session, its publication), one
      SQLAlchemy connection and one ADBC connection per read group (it sizes the
      partitions): 2 x jobs + 2, all closed when the run ends;
    * each worker thread that read: two (SQLAlchemy to reflect, ADBC to COPY), kept
      open for the worker's life: 2 workers x 1 thread = 4 still open after the run (2 if
      one worker happened to read every partition)."""
    cluster.ready()
    app = unique_name("dask_conn")
    load_table(pg_url, features_frame(4_000, seed=3))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    names = [f"j{i}" for i in range(jobs)]
    cfg = write_config(tmp_path, app_url(pg_url, app), {n: job(output=f"out_{n}", chunk_size=500) for n in names},
                       **_dask(cluster, partitions=4))
    seen = run_counting_sessions(cfg, pg_url, app, names)
    assert [r.status for r in seen.results] == ["succeeded"] * jobs
    driver = seen.opened | seen.ours  # this process's sessions (by client port), whoever opened them
    workers = seen.live - driver

    def only_workers_left() -> set[int]:
        left = {int(s["pid"]) for s in sessions(pg_url, app)}
        return left if left <= workers and len(left) in (2, 4) else set()  # 2 per worker that read

    poll(only_workers_left, timeout=30, what=f"only the workers' sessions to stay open (workers {sorted(workers)}, "
                                              f"driver {sorted(driver)})")
    assert len(seen.opened) == 2 * jobs + 1, seen.opened  # lock + publication per job, the group's stream
    assert len(driver) == 2 * jobs + 2, (driver, seen.opened)  # + the ADBC connection that sized the partitions
