"""Query files reach the database as written: comments out, literals intact, values bound.

Every test reads through the real readers (binary COPY into Arrow on
PostgreSQL, SQLite's cursor) on a real database.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from batch_scorer.errors import EXIT_BAD_INPUT, SourceError
from batch_scorer.storage.db import create_engine
from batch_scorer.storage.sources.spec import SourceSpec
from batch_scorer.storage.sources.sql import probe_columns, read_chunks, select_rows
from batch_scorer.storage.sources.sqltext import prepare_query
from tests.helpers import AS_OF, features_frame, load_table

HOSTILE = [
    "x' OR '1'='1",
    "); DROP TABLE features; --",
    "back\\slash \\' ü ✓ 😀 '' $$ :as_of %s %(x)s",
]


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    frame = features_frame(40)
    frame.loc[: len(HOSTILE) - 1, "note"] = HOSTILE
    load_table(db_url, frame)
    eng = create_engine(db_url)
    yield eng
    eng.dispose()


def _spec(tmp_path: Path, sql: str, **kw: Any) -> SourceSpec:
    path = tmp_path / "q.sql"
    path.write_text(sql, encoding="utf-8")
    return SourceSpec(job="j", key=("entity_id",), query=path, **kw)


def _read(engine: sa.Engine, spec: SourceSpec, columns: list[str], as_of: date = AS_OF) -> pd.DataFrame:
    with engine.connect() as conn:
        probe_columns(conn, spec, as_of)
        chunks = list(read_chunks(conn, spec, as_of, columns, 7))
    return pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=columns)


def test_query_whose_last_line_is_a_comment_reads_its_rows(engine: sa.Engine, tmp_path: Path) -> None:
    spec = _spec(tmp_path, "SELECT entity_id, x1 FROM features WHERE snapshot_date = :as_of -- today's rows")
    assert sorted(_read(engine, spec, ["entity_id"])["entity_id"].tolist()) == list(range(1, 41))


def test_bind_names_inside_block_and_line_comments_are_not_binds(engine: sa.Engine, tmp_path: Path) -> None:
    spec = _spec(tmp_path, "-- rows of :day\nSELECT entity_id /* for :as_of, see :other */ FROM features\n"
                           "WHERE snapshot_date = :as_of /* :x\n :y */;\n-- end :z")
    assert len(_read(engine, spec, ["entity_id"])) == 40


def test_string_literals_with_comment_marks_and_colons_come_back_unchanged(engine: sa.Engine, tmp_path: Path) -> None:
    literals = ["-- not a comment", "/* nor this */", ":as_of", ":name", "12:30", "a::b", "\\:x", "it''s", "100%"]
    select = ", ".join(f"'{text}' AS c{i}" for i, text in enumerate(literals))
    spec = _spec(tmp_path, f"SELECT entity_id, {select}, \"note\" AS \"odd:name -- x\"\n"
                           "FROM features WHERE snapshot_date = :as_of AND entity_id = 1")
    columns = ["entity_id", *(f"c{i}" for i in range(len(literals))), "odd:name -- x"]
    row = _read(engine, spec, columns).iloc[0]
    assert [row[f"c{i}"] for i in range(len(literals))] == [t.replace("''", "'") for t in literals]
    assert row["odd:name -- x"] == HOSTILE[0]


def test_query_parameters_are_bound(engine: sa.Engine, tmp_path: Path) -> None:
    spec = _spec(tmp_path, "SELECT entity_id, region FROM features WHERE region = :region AND x3 < :top\n"
                           "AND snapshot_date = :as_of", params=(("region", "north"), ("top", 5), ("unused", 1)))
    rows = _read(engine, spec, ["entity_id", "region"])
    expected = features_frame(40).query("region == 'north' and x3 < 5")["entity_id"].tolist()
    assert sorted(rows["entity_id"].tolist()) == expected and expected


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_parameter_values_stay_values(engine: sa.Engine, tmp_path: Path, value: str) -> None:
    """Quotes, a statement terminator, backslashes, unicode, placeholders: one exact match each."""
    spec = _spec(tmp_path, "SELECT entity_id, note FROM features WHERE note = :note", params=(("note", value),))
    rows = _read(engine, spec, ["entity_id", "note"])
    assert rows["note"].tolist() == [value]
    assert rows["entity_id"].tolist() == [HOSTILE.index(value) + 1]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM features")).scalar() == 40


def test_a_parameter_without_a_value_fails_before_reading_and_names_it(engine: sa.Engine, tmp_path: Path) -> None:
    spec = _spec(tmp_path, "SELECT entity_id FROM features WHERE region = :region AND x3 = :level",
                 params=(("region", "north"),))
    with engine.connect() as conn, pytest.raises(SourceError) as err:
        probe_columns(conn, spec, AS_OF)
    assert ":level" in str(err.value) and ":region" not in str(err.value).split("which")[0]
    assert err.value.exit_code == EXIT_BAD_INPUT


def test_a_query_parameter_called_as_of_is_refused(engine: sa.Engine, tmp_path: Path) -> None:
    spec = _spec(tmp_path, "SELECT entity_id FROM features", params=(("as_of", "x"),))
    with engine.connect() as conn, pytest.raises(SourceError, match="as_of"):
        probe_columns(conn, spec, AS_OF)


def test_an_unterminated_literal_is_a_clear_error(engine: sa.Engine, tmp_path: Path) -> None:
    spec = _spec(tmp_path, "SELECT entity_id\nFROM features WHERE note = 'open")
    with engine.connect() as conn, pytest.raises(SourceError, match="unterminated .* line 2"):
        probe_columns(conn, spec, AS_OF)


@pytest.mark.postgres
def test_postgres_casts_dollar_quotes_and_escape_strings(pg_url: str, tmp_path: Path) -> None:
    load_table(pg_url, features_frame(10))
    spec = _spec(tmp_path, "SELECT entity_id, $$ :as_of -- $$ AS d, $t$ /* $t$ AS t, E'it\\'s :x' AS e\n"
                           "FROM features /* nested /* :x */ :y */\n"
                           "WHERE snapshot_date = :as_of::date AND entity_id = :id::int",
                 params=(("id", "3"),))
    engine = create_engine(pg_url)
    try:
        rows = _read(engine, spec, ["entity_id", "d", "t", "e"])
    finally:
        engine.dispose()
    assert rows.to_dict("records") == [{"entity_id": 3, "d": " :as_of -- ", "t": " /* ", "e": "it's :x"}]


def test_the_generic_path_binds_the_same_values(engine: sa.Engine, tmp_path: Path) -> None:
    """Duplicate-key counts and partitions run the statement through the driver, with bind parameters."""
    spec = _spec(tmp_path, "SELECT entity_id, note FROM features WHERE note = :note", params=(("note", HOSTILE[2]),))
    with engine.connect() as conn:
        stmt = select_rows(conn, spec, AS_OF, ["entity_id"])
        assert [tuple(r) for r in conn.execute(stmt)] == [(3,)]


def test_literal_escaping_round_trips_any_text_through_sqlalchemy() -> None:
    """What text() un-escapes is exactly the literal in the file, and nothing in it is a bind."""
    rng = random.Random(7)
    alphabet = [":", "\\", "$", "a", "1", " ", "''", "-", "/*", "*/", "--"]
    for _ in range(2000):
        body = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        sql = f"SELECT '{body}' AS v, \"{body.replace(chr(39) * 2, '')}\" AS w"
        prepared = prepare_query(sql, postgres=False)
        assert prepared.binds == ()
        assert str(sa.text(prepared.sql).compile(dialect=sqlite.dialect())) == sql
