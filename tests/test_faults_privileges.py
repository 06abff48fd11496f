"""Least privilege (sql/roles_postgresql.sql), in the order its header documents: the
roles script runs before the feature schema exists and again after; an owner runs
init-db (a table job and a query job over the feature schema); a scorer that can
only read features and the registry and write the tool's tables runs the jobs; a
deployer can only register and promote models; a BI reader can only SELECT the
predictions, their views and the BI-safe tool tables. Roles are cluster-wide, so
each test creates uniquely named ones and drops them afterwards."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from batch_scorer.storage.db import create_engine
from tests.conftest import _pg_unavailable, schema_url
from tests.faults_support import Run, ok
from tests.helpers import (
    AS_OF,
    cli_run,
    features_frame,
    job,
    load_table,
    query,
    save_model,
    train,
    write_config,
)

ROLES_SQL = Path(__file__).resolve().parent.parent / "sql" / "roles_postgresql.sql"
ROWS = 300


@dataclass(frozen=True)
class Deployment:
    """Four fresh roles, a feature schema with a features table, the tool's schema."""

    base_url: str
    url: str  # the tool's schema on the search_path, as postgres
    owner: str
    scorer: str
    reader: str
    deployer: str
    schema: str
    feature_schema: str
    psql: str

    def as_role(self, role: str) -> str:
        return sa.engine.make_url(self.url).set(username=role).render_as_string(hide_password=False)

    def apply_roles_sql(self) -> str:
        """Run sql/roles_postgresql.sql with psql, as a DBA would; returns what it printed."""
        variables = {"owner": self.owner, "scorer": self.scorer, "reader": self.reader,
                     "deployer": self.deployer, "schema": self.schema, "feature_schema": self.feature_schema}
        args = [self.psql, self.base_url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(ROLES_SQL)]
        for key, value in variables.items():
            args += ["-v", f"{key}={value}"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    @property
    def roles(self) -> tuple[str, ...]:
        return (self.owner, self.scorer, self.reader, self.deployer)


def _denied(url: str, sql: str) -> bool:
    """True if the statement fails with PostgreSQL's "permission denied" (42501)."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql))
    except sa.exc.ProgrammingError as exc:
        return getattr(exc.orig, "sqlstate", None) == "42501"
    finally:
        engine.dispose()
    return False


def _allowed(url: str, sql: str) -> bool:
    """True if the statement runs (it is rolled back afterwards: nothing stays)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(sql))
            conn.rollback()
    finally:
        engine.dispose()
    return True


@pytest.fixture
def deployment(pg_base_url: str, pg_url: str) -> Iterator[Deployment]:
    """The documented order: the roles script runs before the feature schema exists,
    then the feature tables are created and the script runs again."""
    psql = shutil.which("psql")
    if psql is None:
        _pg_unavailable("psql is not installed (Debian package postgresql-client; .ci/run installs it)")
        raise AssertionError("unreachable")
    tag = uuid.uuid4().hex[:8]
    schema = str(sa.engine.make_url(pg_url).query["options"]).split("=", 1)[1]
    dep = Deployment(pg_base_url, pg_url, f"bs_owner_{tag}", f"bs_scorer_{tag}", f"bs_bi_{tag}",
                     f"bs_deploy_{tag}", schema, f"bs_feat_{tag}", psql)
    admin = create_engine(pg_base_url)
    try:
        before = dep.apply_roles_sql()
        assert f"the feature schema '{dep.feature_schema}' does not exist yet" in before, before
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{dep.feature_schema}"'))
        load_table(schema_url(pg_base_url, dep.feature_schema), features_frame(ROWS))
        assert "does not exist yet" not in dep.apply_roles_sql()
        yield dep
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{dep.feature_schema}" CASCADE'))
            for role in dep.roles:
                exists = conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
                if exists.first():
                    conn.execute(sa.text(f'DROP OWNED BY "{role}" CASCADE'))
                    conn.execute(sa.text(f'DROP ROLE "{role}"'))
        admin.dispose()


QUERY = """
SELECT entity_id, region, x1, x2, x3, color
FROM "{schema}".features
WHERE snapshot_date = :as_of
"""


def _config(tmp_path: Path, dep: Deployment, role: str, **more_jobs: dict[str, object]) -> Path:
    """A table job ``j`` and a query job ``q`` over the feature schema, connecting as ``role``."""
    folder = tmp_path / role
    folder.mkdir(exist_ok=True)
    save_model(train("binary"), folder / "models" / "m.joblib")
    (folder / "q.sql").write_text(QUERY.format(schema=dep.feature_schema))
    jobs = {"j": job(table=f"{dep.feature_schema}.features", pass_through=["region"]),
            "q": job(query="q.sql", output="q_predictions"), **more_jobs}
    return write_config(folder, dep.as_role(role), jobs)


def _relations(dep: Deployment) -> set[str]:
    rows = query(dep.url, "SELECT table_name FROM information_schema.tables WHERE table_schema = :s",
                 s=dep.schema)
    return {name for (name,) in rows}


def test_documented_flow_lets_the_scorer_run_a_table_job_and_a_query_job(
    tmp_path: Path, deployment: Deployment
) -> None:
    dep = deployment
    out = ok(_config(tmp_path, dep, dep.owner), "init-db")
    assert "job j: output table predictions and its views: ready" in out
    assert "job q: output table q_predictions and its views: ready" in out
    assert {"predictions", "predictions_latest", "predictions_daily", "q_predictions", "q_predictions_latest",
            "q_predictions_daily", "scoring_runs", "scoring_runs_bi", "drift_latest"} <= _relations(dep)
    dep.apply_roles_sql()  # step 4: grants BI what init-db made

    run = Run(_config(tmp_path, dep, dep.scorer), "run", "j", "q", "--as-of", AS_OF.isoformat())
    assert run.finish() == 0, run.stderr
    assert query(dep.url, "SELECT count(*) FROM predictions") == [(ROWS,)]
    assert query(dep.url, "SELECT count(*) FROM q_predictions") == [(ROWS,)]
    assert query(dep.url, "SELECT job, status FROM scoring_runs ORDER BY job") == [
        ("j", "succeeded"), ("q", "succeeded")]
    # Everything in the tool's schema belongs to the owner: the scorer created nothing.
    owners = query(dep.url, "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = :s",
                   s=dep.schema)
    assert owners == [(dep.owner,)]


def test_bi_role_reads_predictions_views_and_safe_tool_tables_and_nothing_raw(
    tmp_path: Path, deployment: Deployment
) -> None:
    dep = deployment
    ok(_config(tmp_path, dep, dep.owner), "init-db")
    dep.apply_roles_sql()
    ok(_config(tmp_path, dep, dep.scorer), "run", "j", "--as-of", AS_OF.isoformat())

    bi = dep.as_role(dep.reader)
    assert query(bi, "SELECT count(*) FROM predictions") == [(ROWS,)]
    assert query(bi, "SELECT count(*) FROM predictions_latest") == [(ROWS,)]
    assert query(bi, "SELECT sum(rows) FROM predictions_daily") == [(ROWS,)]
    assert query(bi, "SELECT job, status FROM scoring_runs_bi") == [("j", "succeeded")]
    for table in ("q_predictions_latest", "drift", "drift_latest", "feature_profiles", "model_metrics",
                  "shadow_comparisons", "model_aliases", "model_alias_events"):
        assert _allowed(bi, f"SELECT * FROM {table}"), table
    assert _allowed(bi, "SELECT name, version, sha256, format, sklearn_version, estimator_class, kind, "
                        "features, note, registered_at, registered_by FROM model_versions")
    assert _denied(bi, "SELECT artifact FROM model_versions")
    assert _denied(bi, "SELECT * FROM model_versions")
    assert _denied(bi, "SELECT count(*) FROM scoring_runs")
    assert _denied(bi, "SELECT count(*) FROM rejected_rows")
    assert _denied(bi, "SELECT count(*) FROM job_locks")
    assert _denied(bi, f'SELECT count(*) FROM "{dep.feature_schema}".features')

    # Commands the BI role may not run say so in a paragraph, not with SQLAlchemy's SQL dump.
    for args in (("runs", "--limit", "2"), ("run", "j", "--as-of", AS_OF.isoformat())):
        result = cli_run(_config(tmp_path, dep, dep.reader), *args)
        text = " ".join(result.output.split())
        assert result.exit_code == 1 and "the database role may not do this: permission denied" in text, text
        assert "[SQL:" not in text and "sqlalche.me" not in text and "Traceback" not in text
    assert _denied(bi, "INSERT INTO predictions (job, entity_id, as_of, model_version, run_id, "
                       "scored_at) VALUES ('x', 1, '2026-01-01', 'v', 1, now())")
    assert _denied(bi, "UPDATE predictions SET score = 0")
    assert _denied(bi, "DELETE FROM predictions")
    assert _denied(bi, "TRUNCATE predictions")
    assert _denied(bi, "CREATE TABLE bi_made (a int)")


REGISTER = ("INSERT INTO model_versions (name, version, sha256, format, estimator_class, kind, features, "
            "registered_at, registered_by, artifact) VALUES ('churn', 1, repeat('a', 64), 'joblib', "
            "'sklearn.pipeline.Pipeline', 'classifier', '[]', now(), 'test', '\\x00')")
PROMOTE = ("INSERT INTO model_aliases (name, alias, version, set_at, set_by) "
           "VALUES ('churn', 'champion', 1, now(), 'test')")
EVENT = ("INSERT INTO model_alias_events (name, alias, action, to_version, at, by) "
         "VALUES ('churn', 'champion', 'promote', 1, now(), 'test')")


def test_deployer_registers_and_promotes_models_and_the_scorer_only_reads_the_registry(
    tmp_path: Path, deployment: Deployment
) -> None:
    dep = deployment
    ok(_config(tmp_path, dep, dep.owner), "init-db")
    dep.apply_roles_sql()

    deployer = dep.as_role(dep.deployer)
    assert _allowed(deployer, REGISTER)
    assert _allowed(deployer, f"{PROMOTE}; UPDATE model_aliases SET version = 2")
    assert _allowed(deployer, EVENT)  # its id sequence too
    assert _allowed(deployer, "SELECT artifact FROM model_versions")
    assert _denied(deployer, "UPDATE model_versions SET note = 'x'")
    assert _denied(deployer, "DELETE FROM model_versions")
    assert _denied(deployer, "DELETE FROM model_aliases")
    assert _denied(deployer, "SELECT count(*) FROM scoring_runs")
    assert _denied(deployer, "SELECT count(*) FROM predictions")
    assert _denied(deployer, "CREATE TABLE deployer_made (a int)")

    scorer = dep.as_role(dep.scorer)
    assert _allowed(scorer, "SELECT name, version, artifact FROM model_versions")
    assert _allowed(scorer, "SELECT * FROM model_aliases JOIN model_alias_events USING (name, alias)")
    assert _denied(scorer, REGISTER)
    assert _denied(scorer, PROMOTE)
    assert _denied(scorer, EVENT)
    assert _denied(scorer, "UPDATE model_aliases SET version = 2")
    assert _denied(scorer, "DELETE FROM model_versions")


def test_the_deployer_registers_and_promotes_through_the_cli_and_the_scorer_runs_it(
    tmp_path: Path, deployment: Deployment
) -> None:
    """Promoting checks the version against the job's source (a plan, with drift monitoring
    on): as the deployer, who may not read the ledger. The scorer then scores it."""
    dep = deployment
    table = f"{dep.feature_schema}.features"
    registry_spec = {**job(table=table, output="r_predictions"), "model": {"registry": "churn"}}
    as_owner = _config(tmp_path, dep, dep.owner, r=registry_spec)
    # The owner's first init-db makes the tool's tables (the registry among them); r's output
    # table waits for a champion (its prediction type is the model's), so it says NOT ready.
    first_init = cli_run(as_owner, "init-db")
    assert first_init.exit_code == 2 and "job r: output table NOT ready" in first_init.output
    dep.apply_roles_sql()
    as_deployer = _config(tmp_path, dep, dep.deployer, r=registry_spec)
    first = save_model(train("binary"), tmp_path / "v1.joblib")
    second = save_model(train("forest"), tmp_path / "v2.joblib")

    ok(as_deployer, "models", "register", "churn", str(first), "--alias", "champion")
    ok(as_deployer, "models", "register", "churn", str(second))
    ok(as_deployer, "models", "promote", "churn", "2")
    ok(as_owner, "init-db")  # now r's table too
    dep.apply_roles_sql()  # grants on the new table

    as_scorer = _config(tmp_path, dep, dep.scorer, r=registry_spec)
    ok(as_scorer, "run", "r", "--as-of", AS_OF.isoformat())
    assert query(dep.url, "SELECT DISTINCT model_version FROM r_predictions") == [("v2",)]


def test_scorer_role_cannot_create_tables_or_write_features(deployment: Deployment) -> None:
    dep = deployment
    scorer = dep.as_role(dep.scorer)
    assert _denied(scorer, "CREATE TABLE scorer_made (a int)")
    assert _denied(scorer, f'CREATE TABLE "{dep.feature_schema}".scorer_made (a int)')
    assert _denied(scorer, f'DELETE FROM "{dep.feature_schema}".features')
    assert _denied(scorer, f'UPDATE "{dep.feature_schema}".features SET x1 = 0')


def test_scorer_role_without_init_db_gets_an_error_naming_init_db(
    tmp_path: Path, deployment: Deployment
) -> None:
    dep = deployment
    run = Run(_config(tmp_path, dep, dep.scorer), "run", "j", "--as-of", AS_OF.isoformat())
    assert run.finish() == 1, run.stderr
    assert "batch-scorer init-db" in run.stderr and "permission denied" in run.stderr
    assert dep.scorer in run.stderr
    assert "Traceback" not in run.stderr
    every = Run(_config(tmp_path, dep, dep.scorer), "run", "--all", "--as-of", AS_OF.isoformat())
    assert every.finish() == 1, every.stderr
    assert every.stderr.count("batch-scorer init-db") == 1 and "Error (2 jobs: j, q)" in every.stderr  # once
    assert query(dep.url, "SELECT count(*) FROM pg_tables WHERE schemaname = :s", s=dep.schema) == [(0,)]


def _with_new_output(tmp_path: Path, dep: Deployment) -> Path:
    """The deployment after init-db, and the scorer's config with a job whose output is new."""
    ok(_config(tmp_path, dep, dep.owner), "init-db")
    dep.apply_roles_sql()
    return _config(tmp_path, dep, dep.scorer,
                   newjob=job(table=f"{dep.feature_schema}.features", output="predictions_v2"))


def test_scorer_role_with_a_new_output_table_gets_an_error_naming_init_db(
    tmp_path: Path, deployment: Deployment
) -> None:
    dep = deployment
    run = Run(_with_new_output(tmp_path, dep), "run", "newjob", "--as-of", AS_OF.isoformat())
    assert run.finish() == 1, run.stderr
    assert "predictions_v2" in run.stderr and "batch-scorer init-db" in run.stderr
    [(status, error)] = query(dep.url, "SELECT status, error FROM scoring_runs")
    assert status == "failed" and "batch-scorer init-db" in error


def test_init_db_as_the_scorer_with_a_missing_output_table_fails_naming_it(
    tmp_path: Path, deployment: Deployment
) -> None:
    dep = deployment
    result = cli_run(_with_new_output(tmp_path, dep), "init-db")
    assert result.exit_code != 0, result.output
    assert "job j: output table predictions and its views: ready" in result.output
    [line] = [ln for ln in result.output.splitlines() if ln.startswith("job newjob:")]
    assert "NOT ready" in line and "predictions_v2" in line and dep.scorer in line
    assert "batch-scorer init-db" in line and "permission denied" in line
    assert "predictions_v2" not in _relations(dep)

    # The owner creates it: the scorer may write it at once, BI sees it once the script runs again.
    ok(_config(tmp_path, dep, dep.owner, newjob=job(table=f"{dep.feature_schema}.features",
                                                    output="predictions_v2")), "init-db")
    assert _allowed(dep.as_role(dep.scorer), "DELETE FROM predictions_v2")
    assert _denied(dep.as_role(dep.reader), "SELECT count(*) FROM predictions_v2_latest")
    dep.apply_roles_sql()
    assert _allowed(dep.as_role(dep.reader), "SELECT count(*) FROM predictions_v2_latest")


def test_validate_as_the_scorer_with_a_missing_output_table_says_failed(
    tmp_path: Path, deployment: Deployment
) -> None:
    dep = deployment
    result = cli_run(_with_new_output(tmp_path, dep), "validate", "newjob")
    assert result.exit_code != 0, result.output
    assert "newjob: FAILED" in result.output
    assert "predictions_v2" in result.output and "batch-scorer init-db" in result.output
    assert "Traceback" not in result.output
    assert "predictions_v2" not in _relations(dep)
