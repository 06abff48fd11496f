"""``where`` filters of a table source: equalities bound as values, NULL as IS NULL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from batch_scorer.errors import SourceError
from batch_scorer.storage.db import create_engine
from batch_scorer.storage.sources.spec import SourceSpec
from batch_scorer.storage.sources.sql import check_columns, probe_columns, read_chunks, select_rows
from tests.helpers import (
    AS_OF,
    OTHER_AS_OF,
    cli_run,
    features_frame,
    job,
    load_table,
    save_model,
    train,
    write_config,
)

HOSTILE = ["x' OR '1'='1", "); DROP TABLE features; --", "\\'; DROP TABLE features; -- ü ✓ 😀"]


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    frame = features_frame(60)
    frame.loc[:2, "note"] = HOSTILE
    frame.loc[3:5, "note"] = None
    load_table(db_url, frame)
    load_table(db_url, features_frame(20, as_of=OTHER_AS_OF))
    eng = create_engine(db_url)
    yield eng
    eng.dispose()


def _spec(*where: tuple[str, Any]) -> SourceSpec:
    return SourceSpec(job="j", key=("entity_id",), table="features", as_of_column="snapshot_date", where=where)


def _ids(engine: sa.Engine, spec: SourceSpec) -> list[int]:
    """The rows read, both ways: the streaming reader and the statement through the driver."""
    with engine.connect() as conn:
        streamed = sorted(int(v) for c in read_chunks(conn, spec, AS_OF, ["entity_id"], 9) for v in c["entity_id"])
        bound = sorted(r[0] for r in conn.execute(select_rows(conn, spec, AS_OF, ["entity_id"])))
    assert streamed == bound
    return streamed


def test_where_keeps_only_matching_rows_of_the_day(engine: sa.Engine) -> None:
    frame = features_frame(60)
    expected = frame[(frame.region == "north") & (frame.x3 == 4)]["entity_id"].tolist()
    assert _ids(engine, _spec(("region", "north"), ("x3", 4))) == expected and expected


def test_values_compare_as_the_column_type_whatever_their_python_type(engine: sa.Engine) -> None:
    """A number given as text reads as the integer column's number; a date binds as a date."""
    frame = features_frame(60)
    expected = frame[frame.x3 == 4]["entity_id"].tolist()
    assert _ids(engine, _spec(("x3", "4"))) == expected
    assert _ids(engine, _spec(("x3", 4), ("snapshot_date", AS_OF))) == expected


def test_a_null_value_means_is_null(engine: sa.Engine) -> None:
    assert _ids(engine, _spec(("note", None))) == [4, 5, 6]


@pytest.mark.parametrize("value", ["x' OR '1'='1 ", "'); DROP TABLE features; --", "n1' --"])
def test_an_injection_attempt_matches_nothing_and_the_table_survives(engine: sa.Engine, value: str) -> None:
    assert _ids(engine, _spec(("note", value))) == []
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM features")).scalar() == 80


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_held_by_a_row_matches_that_row_exactly(engine: sa.Engine, value: str) -> None:
    assert _ids(engine, _spec(("note", value))) == [HOSTILE.index(value) + 1]


def test_a_value_that_is_not_a_scalar_is_refused_before_reading(engine: sa.Engine) -> None:
    spec = _spec(("region", ["north", "south"]))
    with engine.connect() as conn, pytest.raises(SourceError, match="where 'region' has a value of type list"):
        probe_columns(conn, spec, AS_OF)


def test_a_missing_where_column_is_named_before_reading(engine: sa.Engine) -> None:
    spec = _spec(("region", "north"), ("country", "DE"))
    with engine.connect() as conn:
        columns = probe_columns(conn, spec, AS_OF)
    with pytest.raises(SourceError, match=r"where column\(s\) \['country'\]") as err:
        check_columns(spec, ["x1"], columns)
    assert "'region'" not in str(err.value).split("It has")[0]


@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_where_column_the_source_lacks_is_exit_2_naming_the_job_and_column(
    tmp_path: Path, db_url: str, command: str
) -> None:
    """End to end (a new user's typo ``regio``): the first-row probe does not trip over the
    missing column; the columns check names it, exit 2, nothing published."""
    load_table(db_url, features_frame(30, seed=2))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    spec = job()
    spec["source"]["where"] = {"regio": "north"}
    cfg = write_config(tmp_path, db_url, {"j": spec})
    result = cli_run(cfg, command, "j", *(["--as-of", AS_OF.isoformat()] if command == "run" else []))
    assert result.exit_code == 2, result.output
    assert "job 'j'" in result.output and "where column(s) ['regio']" in result.output, result.output
    assert "KeyError" not in result.output
    check = create_engine(db_url)
    try:
        assert not sa.inspect(check).has_table("predictions")
    finally:
        check.dispose()
