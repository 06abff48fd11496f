"""The DDL in sql/ is generated from batch_scorer.schema and cannot drift from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_scorer.storage.ddl import render_ddl
from tests.helpers import query

SQL = Path(__file__).resolve().parent.parent / "sql"


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_generated_ddl_matches_the_code(dialect: str) -> None:
    committed = (SQL / f"schema_{dialect}.sql").read_text()
    assert committed == render_ddl(dialect), (
        f"sql/schema_{dialect}.sql is stale; regenerate it with: python -c \"from "
        f"batch_scorer.storage.ddl import render_ddl; print(render_ddl('{dialect}'), end='')\" "
        f"> sql/schema_{dialect}.sql"
    )


def test_generated_postgresql_ddl_runs(pg_url: str) -> None:
    from batch_scorer.storage.db import create_engine

    engine = create_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql((SQL / "schema_postgresql.sql").read_text())
    finally:
        engine.dispose()
    assert query(pg_url, "SELECT count(*) FROM predictions_latest") == [(0,)]
