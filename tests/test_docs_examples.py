"""The documented PostgreSQL set-up works as written: DATABASE_URL without the password,
the password in PGPASSWORD (libpq reads it), and the demo runs there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import sqlalchemy as sa

from batch_scorer.storage.db import create_engine
from tests.helpers import query

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_on_postgres_with_the_documented_database_url_and_pgpassword(
    tmp_path: Path, pg_url: str, pg_base_url: str
) -> None:
    role, secret = f"bs_docs_{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    schema = str(sa.engine.make_url(pg_url).query["options"]).split("=", 1)[1]
    admin = create_engine(pg_base_url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'")
        conn.exec_driver_sql(f'GRANT ALL ON SCHEMA "{schema}" TO {role}')
    try:
        shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
        shutil.copytree(ROOT / "sql", tmp_path / "sql")
        # As docs/configuration.md says: the URL names the user, PGPASSWORD holds the password.
        url = sa.engine.make_url(pg_url).set(username=role, password=None).render_as_string(hide_password=False)
        env = dict(os.environ, DATABASE_URL=url, PGPASSWORD=secret)
        done = subprocess.run([sys.executable, "-m", "batch_scorer.cli", "--config", str(tmp_path / "config.yaml"),
                               "demo"], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert secret not in done.stdout + done.stderr
        assert query(pg_url, "SELECT count(DISTINCT job) FROM predictions") == [(5,)]
        # retention runs after churn.* and ltv.* and joins their fresh outputs: analysed first
        # (planned from missing statistics, that join took 40 s instead of 40 ms).
        analysed = query(pg_url, "SELECT relname FROM pg_stat_user_tables WHERE schemaname = :s "
                                 "AND last_analyze IS NOT NULL ORDER BY 1", s=schema)
        assert analysed == [("ltv_predictions",), ("predictions",)]
        assert query(pg_url, "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = :s", s=schema) == [
            (role,)]
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP OWNED BY {role} CASCADE')
            conn.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()
