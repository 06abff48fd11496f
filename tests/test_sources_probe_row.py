"""probe_row: one real source row, typed exactly as the streaming reader types it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from batch_scorer.storage.db import create_engine
from batch_scorer.storage.sources.spec import SourceSpec
from batch_scorer.storage.sources.sql import needed_columns, read_chunks
from batch_scorer.storage.sources.sql import probe_row as probe
from tests.helpers import AS_OF, FEATURES, OTHER_AS_OF, train

PASS = ("x1", "note", "born", "balance", "active", "seen_at", "seen_tz")


def _rows(n: int) -> list[dict[str, Any]]:
    return [
        {"region": ["north", "ü ✓"][i % 2], "entity_id": i, "snapshot_date": AS_OF, "x1": i / 7, "x2": -i / 3,
         "x3": i % 10, "color": ["red", "green", "blue"][i % 3], "note": f"it's {i}",
         "born": date(1970, 1, 1) + timedelta(days=97 * i), "balance": Decimal(f"{i}.0{i % 10}"),
         "active": i % 2 == 0, "seen_at": datetime(2026, 3, 30, 12) + timedelta(seconds=i),
         "seen_tz": datetime(2026, 3, 30, 22, tzinfo=UTC) + timedelta(microseconds=i)}
        for i in range(n)
    ]


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    pg = db_url.startswith("postgresql")
    table = sa.Table(
        "features", sa.MetaData(),
        sa.Column("region", sa.Text), sa.Column("entity_id", sa.Integer), sa.Column("snapshot_date", sa.Date),
        sa.Column("x1", sa.Float(53)), sa.Column("x2", sa.Float(53)), sa.Column("x3", sa.BigInteger),
        sa.Column("color", sa.Text), sa.Column("note", sa.Text), sa.Column("born", sa.Date),
        sa.Column("balance", sa.Numeric(12, 2)), sa.Column("active", sa.Boolean), sa.Column("seen_at", sa.DateTime),
        sa.Column("seen_tz", sa.DateTime(timezone=pg)),
    )
    eng = create_engine(db_url)
    table.metadata.create_all(eng)
    with eng.begin() as conn:
        conn.execute(table.insert(), _rows(60))
    yield eng
    eng.dispose()


def _spec() -> SourceSpec:
    return SourceSpec(job="j", key=("region", "entity_id"), table="features", as_of_column="snapshot_date",
                      pass_through=PASS)


def _streamed(engine: sa.Engine, spec: SourceSpec, as_of: date = AS_OF) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.concat(list(read_chunks(conn, spec, as_of, needed_columns(spec, FEATURES), 25, FEATURES)),
                         ignore_index=True)


def test_the_probe_row_is_a_source_row_with_the_readers_types(engine: sa.Engine) -> None:
    spec = _spec()
    with engine.connect() as conn:
        row = probe(conn, spec, AS_OF, needed_columns(spec, FEATURES), FEATURES)
    full = _streamed(engine, spec)
    assert len(row) == 1
    assert list(row.columns) == list(full.columns)  # features, keys and the exact copies of x1
    assert row.dtypes.to_dict() == full.dtypes.to_dict()
    match = full[(full.region == row.region[0]) & (full.entity_id == row.entity_id[0])].reset_index(drop=True)
    pd.testing.assert_frame_equal(row, match)


def test_the_probe_row_scores_like_the_streamed_row(engine: sa.Engine) -> None:
    """The model-contract probe: the model takes the probe row as it takes a chunk."""
    model = train("binary")
    spec = _spec()
    with engine.connect() as conn:
        row = probe(conn, spec, AS_OF, needed_columns(spec, FEATURES), FEATURES)
    full = _streamed(engine, spec)
    match = full[(full.region == row.region[0]) & (full.entity_id == row.entity_id[0])]
    assert model.predict_proba(row[FEATURES]).tolist() == model.predict_proba(match[FEATURES]).tolist()


def test_a_day_without_rows_gives_an_empty_frame(engine: sa.Engine) -> None:
    spec = _spec()
    with engine.connect() as conn:
        row = probe(conn, spec, OTHER_AS_OF, ["region", "entity_id", "x1"], ["x1"])
    assert row.empty and list(row.columns) == ["region", "entity_id", "x1"]


def test_a_query_source_probes_one_of_its_rows(engine: sa.Engine, tmp_path: Path) -> None:
    (tmp_path / "q.sql").write_text("SELECT region, entity_id, x1, note FROM features\n"
                                    "WHERE snapshot_date = :as_of AND note = :note -- one row")
    spec = SourceSpec(job="j", key=("region", "entity_id"), query=tmp_path / "q.sql",
                      params=(("note", "it's 7"),), pass_through=("note",))
    with engine.connect() as conn:
        row = probe(conn, spec, AS_OF, ["region", "entity_id", "x1", "note"], ["x1"])
    assert row.to_dict("records") == [{"region": "ü ✓", "entity_id": 7, "x1": 1.0, "note": "it's 7"}]
