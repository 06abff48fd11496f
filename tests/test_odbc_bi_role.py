"""The BI role of sql/roles_postgresql.sql, connected through psqlODBC as Excel or
Power BI would: it reads the views made for it (``_latest``, ``_daily``,
``scoring_runs_bi``, ``drift_latest``) and not the ledger, the rejected rows or
the model registry behind them. A view runs with its owner's rights, so
SELECT on ``scoring_runs_bi`` needs no right on ``scoring_runs``."""

from __future__ import annotations

from pathlib import Path

from batch_scorer.storage.db import create_engine
from batch_scorer.storage.schema import TOOL_TABLES
from tests.faults_support import ok
from tests.helpers import AS_OF, cli_run, job, save_model, train, write_config
from tests.test_faults_privileges import ROWS, Deployment
from tests.test_faults_privileges import deployment as deployment  # noqa: F401 - the fixture
from tests.test_odbc_drivers import PG_DRIVER, odbc_read, pg_odbc, require_driver

BI_VIEWS = ("predictions_latest", "predictions_daily", "scoring_runs_bi", "drift_latest")
# What sql/roles_postgresql.sql already keeps from the reader.
SCRIPT_HIDES = ("scoring_runs", "rejected_rows", "job_locks")
# The tool's other tables, which the script still grants the reader (every table
# not in SCRIPT_HIDES): model_versions holds the model files themselves,
# shadow_comparisons error text. Its owner is to add them to both of its lists.
SCRIPT_MUST_HIDE = tuple(t.name for t in TOOL_TABLES if t.name not in SCRIPT_HIDES)


def _config(folder: Path, dep: Deployment, role: str) -> Path:
    folder.mkdir(exist_ok=True)
    save_model(train("binary"), folder / "models" / "m.joblib")
    return write_config(folder, dep.as_role(role),
                        {"j": job(table=f"{dep.feature_schema}.features", pass_through=["region"])})


def _hide_the_tool_tables(dep: Deployment) -> None:
    """What the roles script must also do (until it does, this test does it)."""
    engine = create_engine(dep.url)
    try:
        with engine.begin() as conn:
            for name in SCRIPT_MUST_HIDE:
                conn.exec_driver_sql(f'REVOKE ALL ON "{dep.schema}"."{name}" FROM "{dep.reader}"')
    finally:
        engine.dispose()


def _denied(connection: str, table: str) -> bool:
    """True if SELECT on ``table`` through ODBC fails with permission denied (42501)."""
    pyodbc = require_driver(PG_DRIVER)
    try:
        odbc_read(connection, f"SELECT count(*) FROM {table}")
    except pyodbc.ProgrammingError as exc:
        return exc.args[0] == "42501"
    return False


def test_bi_role_through_odbc_reads_the_views_and_not_the_ledger_or_the_models(
    tmp_path: Path, deployment: Deployment
) -> None:
    require_driver(PG_DRIVER)
    dep = deployment
    ok(_config(tmp_path / "owner", dep, dep.owner), "init-db")
    dep.apply_roles_sql()  # again, as its header says: grants the reader what init-db made
    _hide_the_tool_tables(dep)
    run = cli_run(_config(tmp_path / "scorer", dep, dep.scorer), "run", "j", "--as-of", AS_OF.isoformat())
    assert run.exit_code == 0, run.output

    bi = pg_odbc(dep.url, user=dep.reader)
    counts = {view: odbc_read(bi, f"SELECT count(*) FROM {view}")[1][0][0] for view in BI_VIEWS}
    assert counts["predictions_latest"] == ROWS and counts["scoring_runs_bi"] == 1
    assert counts["predictions_daily"] == 2  # two classes
    # The first run is its own reference: one drift row per feature, score and class, all ok.
    statuses = odbc_read(bi, "SELECT DISTINCT status FROM drift_latest")[1]
    assert counts["drift_latest"] > 0 and [tuple(s) for s in statuses] == [("ok",)]
    [(status, rows)] = odbc_read(bi, "SELECT status, rows_scored FROM scoring_runs_bi")[1]
    assert (status, rows) == ("succeeded", ROWS)
    for table in (*SCRIPT_HIDES, *SCRIPT_MUST_HIDE, f'"{dep.feature_schema}".features'):
        assert _denied(bi, table), f"the BI role can read {table}"


def test_roles_script_alone_already_grants_the_reader_every_bi_view(
    tmp_path: Path, deployment: Deployment
) -> None:
    dep = deployment
    ok(_config(tmp_path / "owner", dep, dep.owner), "init-db")
    dep.apply_roles_sql()
    require_driver(PG_DRIVER)
    bi = pg_odbc(dep.url, user=dep.reader)
    for view in BI_VIEWS:
        assert odbc_read(bi, f"SELECT count(*) FROM {view}")[1] == [(0,)], view


def test_a_time_zone_set_on_the_bi_role_reaches_every_odbc_session(deployment: Deployment) -> None:
    """The DBA's fix for every BI client at once: ALTER ROLE ... SET TimeZone = 'UTC'."""
    require_driver(PG_DRIVER)
    dep = deployment
    bi = pg_odbc(dep.url, timezone=None, user=dep.reader)  # a client that sets nothing
    sql = "SELECT current_setting('TimeZone'), TIMESTAMPTZ '2026-03-31 12:00:00+00'"
    engine = create_engine(dep.url)
    try:
        for zone, noon_utc_reads_as in (("Asia/Tokyo", "2026-03-31 21:00:00"), ("UTC", "2026-03-31 12:00:00")):
            with engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER ROLE \"{dep.reader}\" SET TimeZone = '{zone}'")
            [(setting, noon)] = odbc_read(bi, sql)[1]  # timestamptz arrives naive, in the session's zone
            assert (setting, noon.isoformat(sep=" ")) == (zone, noon_utc_reads_as)
    finally:
        engine.dispose()
