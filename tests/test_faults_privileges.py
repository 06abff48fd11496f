"""Least privilege (sql/roles_postgresql.sql): an owner runs init-db, a scorer that
can only read features and write the tool's tables runs the job, a BI reader can
only SELECT the predictions and the view. Roles are cluster-wide, so each test
creates uniquely named ones and drops them afterwards."""

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
from tests.conftest import schema_url
from tests.faults_support import Run, ok
from tests.helpers import AS_OF, features_frame, job, load_table, query, save_model, train, write_config

ROLES_SQL = Path(__file__).resolve().parent.parent / "sql" / "roles_postgresql.sql"
ROWS = 300


@dataclass(frozen=True)
class Deployment:
    """Three fresh roles, a feature schema with a features table, the tool's schema."""

    base_url: str
    url: str  # the tool's schema on the search_path, as postgres
    owner: str
    scorer: str
    reader: str
    schema: str
    feature_schema: str
    psql: str

    def as_role(self, role: str) -> str:
        return sa.engine.make_url(self.url).set(username=role).render_as_string(hide_password=False)

    def apply_roles_sql(self) -> None:
        """Run sql/roles_postgresql.sql with psql, as a DBA would."""
        variables = {"owner": self.owner, "scorer": self.scorer, "reader": self.reader,
                     "schema": self.schema, "feature_schema": self.feature_schema}
        args = [self.psql, self.base_url, "-X", "-q", "-f", str(ROLES_SQL)]
        for key, value in variables.items():
            args += ["-v", f"{key}={value}"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr


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


@pytest.fixture
def deployment(pg_base_url: str, pg_url: str) -> Iterator[Deployment]:
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed")
    tag = uuid.uuid4().hex[:8]
    schema = str(sa.engine.make_url(pg_url).query["options"]).split("=", 1)[1]
    dep = Deployment(pg_base_url, pg_url, f"bs_owner_{tag}", f"bs_scorer_{tag}", f"bs_bi_{tag}",
                     schema, f"bs_feat_{tag}", psql)
    admin = create_engine(pg_base_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{dep.feature_schema}"'))
    try:
        load_table(schema_url(pg_base_url, dep.feature_schema), features_frame(ROWS))
        dep.apply_roles_sql()
        yield dep
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{dep.feature_schema}" CASCADE'))
            for role in (dep.owner, dep.scorer, dep.reader):
                exists = conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
                if exists.first():
                    conn.execute(sa.text(f'DROP OWNED BY "{role}" CASCADE'))
                    conn.execute(sa.text(f'DROP ROLE "{role}"'))
        admin.dispose()


def _config(tmp_path: Path, dep: Deployment, role: str) -> Path:
    folder = tmp_path / role
    folder.mkdir(exist_ok=True)
    save_model(train("binary"), folder / "models" / "m.joblib")
    return write_config(folder, dep.as_role(role),
                        {"j": job(table=f"{dep.feature_schema}.features", pass_through=["region"])})


def test_scorer_role_runs_the_job_and_bi_role_can_only_select_predictions(
    tmp_path: Path, deployment: Deployment
) -> None:
    dep = deployment
    ok(_config(tmp_path, dep, dep.owner), "init-db")
    dep.apply_roles_sql()  # again: grants BI the output table and view init-db made

    run = Run(_config(tmp_path, dep, dep.scorer), "run", "j", "--as-of", AS_OF.isoformat())
    assert run.finish() == 0, run.stderr
    assert query(dep.url, "SELECT count(*) FROM predictions") == [(ROWS,)]
    assert query(dep.url, "SELECT status FROM scoring_runs") == [("succeeded",)]
    # Everything in the tool's schema belongs to the owner: the scorer created nothing.
    owners = query(dep.url, "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = :s",
                   s=dep.schema)
    assert owners == [(dep.owner,)]

    bi = dep.as_role(dep.reader)
    assert query(bi, "SELECT count(*) FROM predictions") == [(ROWS,)]
    assert query(bi, "SELECT count(*) FROM predictions_latest") == [(ROWS,)]
    assert _denied(bi, "INSERT INTO predictions (job, entity_id, as_of, model_version, run_id, "
                       "scored_at) VALUES ('x', 1, '2026-01-01', 'v', 1, now())")
    assert _denied(bi, "UPDATE predictions SET score = 0")
    assert _denied(bi, "DELETE FROM predictions")
    assert _denied(bi, "TRUNCATE predictions")
    assert _denied(bi, "SELECT count(*) FROM scoring_runs")
    assert _denied(bi, "SELECT count(*) FROM rejected_rows")
    assert _denied(bi, f'SELECT count(*) FROM "{dep.feature_schema}".features')
    assert _denied(bi, "CREATE TABLE bi_made (a int)")


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
    assert query(dep.url, "SELECT count(*) FROM pg_tables WHERE schemaname = :s", s=dep.schema) == [(0,)]


def test_scorer_role_with_a_new_output_table_gets_an_error_naming_init_db(
    tmp_path: Path, deployment: Deployment
) -> None:
    dep = deployment
    ok(_config(tmp_path, dep, dep.owner), "init-db")
    folder = tmp_path / "new_output"
    folder.mkdir()
    save_model(train("binary"), folder / "models" / "m.joblib")
    cfg = write_config(folder, dep.as_role(dep.scorer),
                       {"j": job(table=f"{dep.feature_schema}.features", output="predictions_v2")})
    run = Run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    assert run.finish() == 1, run.stderr
    assert "predictions_v2" in run.stderr and "batch-scorer init-db" in run.stderr
    [(status, error)] = query(dep.url, "SELECT status, error FROM scoring_runs")
    assert status == "failed" and "batch-scorer init-db" in error
