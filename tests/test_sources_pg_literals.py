"""The PostgreSQL fast path's literals are the values themselves, whatever the session's settings."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from batch_scorer.storage.db import create_engine
from batch_scorer.storage.sources.postgres_arrow import pg_literal

pytestmark = pytest.mark.postgres


def _random_texts(n: int) -> list[str]:
    rng = random.Random(11)
    pieces = ["'", "''", "\\", "\\'", "$$", "--", "/*", "*/", ";", ":as_of", "%s", "%", "\t", "\n", "\r",
              "ü", "✓", "😀", "\u2028", "\x01", "\x7f", "E'", "a", " ", ")", "DROP TABLE t"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 9))) for _ in range(n)]


VALUES: list[Any] = [
    None, True, False, 0, -5, 2**63 - 1, -(2**63), 10**30, 1.5, -0.1, 1e300, float("inf"), float("-inf"),
    Decimal("-12345678901234567890.0123456789"), Decimal("1E+3"), date(1, 1, 1), date(9999, 12, 31),
    datetime(2026, 3, 29, 1, 59, 59, 999999),
    datetime(2026, 3, 29, 2, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2026, 3, 29, tzinfo=UTC), time(23, 59, 59, 1), timedelta(days=-1, seconds=5, microseconds=7),
    uuid.UUID(int=12345), b"\x00\xff'\\",
]


@pytest.fixture
def conn(pg_url: str) -> Iterator[sa.Connection]:
    engine = create_engine(pg_url)
    with engine.connect() as connection:
        yield connection
    engine.dispose()


@pytest.mark.parametrize("conforming", ["on", "off"])
def test_string_literals_read_back_as_the_same_string(conn: sa.Connection, conforming: str) -> None:
    """With standard_conforming_strings off, a plain '...' would read backslashes as escapes."""
    conn.execute(sa.text(f"SET standard_conforming_strings = {conforming}"))
    texts = _random_texts(300)
    sql = "SELECT " + ", ".join(f"{pg_literal(t)} AS c{i}" for i, t in enumerate(texts))
    assert sql.isascii()
    assert list(conn.exec_driver_sql(sql.replace("%", "%%")).one()) == texts


def test_typed_literals_read_back_as_the_same_values(conn: sa.Connection) -> None:
    sql = "SELECT " + ", ".join(f"{pg_literal(v)} AS c{i}" for i, v in enumerate(VALUES))
    got = list(conn.exec_driver_sql(sql).one())
    assert got[:-1] == VALUES[:-1]
    assert bytes(got[-1]) == VALUES[-1]


def test_a_negative_number_cannot_start_a_comment(conn: sa.Connection) -> None:
    assert conn.exec_driver_sql(f"SELECT 10 -{pg_literal(-5)}").scalar() == 15


@pytest.mark.parametrize("value", ["nul\x00", "\ud800", object()])
def test_values_without_a_postgresql_literal_are_refused(value: Any) -> None:
    with pytest.raises(TypeError):
        pg_literal(value)
