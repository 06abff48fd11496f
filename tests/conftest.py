"""Fixtures: a SQLite file per test, and a fresh schema per test on the real PostgreSQL.

PostgreSQL tests read ``BATCH_SCORER_TEST_POSTGRES_URL``. Locally they are
skipped with a reason when it is unset or the server does not answer; when
``CI`` is set they fail instead, so a missing server can never pass silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from batch_scorer.storage.db import create_engine

PG_ENV = "BATCH_SCORER_TEST_POSTGRES_URL"


def _pg_unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_base_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        _pg_unavailable(f"{PG_ENV} is not set")
        raise AssertionError("unreachable")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        _pg_unavailable(f"no PostgreSQL server answers at {PG_ENV}: {exc.__class__.__name__}")
    finally:
        engine.dispose()
    return url


def schema_url(base: str, schema: str) -> str:
    """The base URL with search_path set to ``schema`` (tests are isolated per schema)."""
    url = sa.engine.make_url(base)
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


@pytest.fixture
def pg_url(pg_base_url: str) -> Iterator[str]:
    """A fresh, empty schema on the real server; dropped afterwards."""
    schema = f"bs_test_{uuid.uuid4().hex[:10]}"
    engine = create_engine(pg_base_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema_url(pg_base_url, schema)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs twice: on a SQLite file and on the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return str(request.getfixturevalue("pg_url"))


PG_FIXTURES = {"pg_url", "pg_base_url"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the PostgreSQL server carries the ``postgres`` marker
    (``-m 'not postgres'`` runs the rest), whichever fixture brings it in."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        on_pg = callspec is not None and callspec.params.get("db_url") == "postgresql"
        if names & PG_FIXTURES or on_pg:
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(autouse=True)
def _reset_cli_logging() -> Iterator[None]:
    """In-process CLI calls configure the package logger; undo it so caplog works."""
    yield
    import logging

    logger = logging.getLogger("batch_scorer")
    logger.handlers[:] = []
    logger.propagate = True
    logger.setLevel(logging.NOTSET)
