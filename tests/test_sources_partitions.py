"""key_partitions: key ranges that together read every source row of the as_of exactly once."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from batch_scorer.errors import UsageError
from batch_scorer.storage.db import create_engine
from batch_scorer.storage.sources.partitions import Partition, key_partitions
from batch_scorer.storage.sources.postgres_arrow import render_sql
from batch_scorer.storage.sources.spec import SourceSpec
from batch_scorer.storage.sources.sql import read_chunks, select_rows
from tests.helpers import AS_OF, OTHER_AS_OF

N = 150
TEXTS = ["", "A", "a", "b", "B", "ü", "it's", "Z", "10", "9", " x", "x ", "ß", "\\", "--"]
KEYS = {"int": ("k_int",), "text": ("k_text",), "text+int": ("k_text", "k_i2")}


def _rows() -> list[dict[str, Any]]:
    rng = random.Random(3)
    rows = []
    for rid in range(N + 20):
        rows.append({
            "rid": rid,
            "snapshot_date": AS_OF if rid < N else OTHER_AS_OF,
            # Duplicate keys on purpose: partitions must hold every row once anyway.
            "k_int": None if rid % 17 == 0 else rng.randint(-60, 60),
            "k_text": None if rid % 19 == 0 else rng.choice(TEXTS) + str(rng.randint(0, 4)),
            "k_i2": None if rid % 13 == 0 else rng.randint(0, 3),
        })
    return rows


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    table = sa.Table(
        "src", sa.MetaData(), sa.Column("rid", sa.Integer), sa.Column("snapshot_date", sa.Date),
        sa.Column("k_int", sa.Integer), sa.Column("k_text", sa.Text), sa.Column("k_i2", sa.Integer),
        sa.Index("src_keys", "k_text", "k_i2"),
    )
    eng = create_engine(db_url)
    table.metadata.create_all(eng)
    with eng.begin() as conn:
        conn.execute(table.insert(), _rows())
    yield eng
    eng.dispose()


def _spec(key: tuple[str, ...]) -> SourceSpec:
    return SourceSpec(job="j", key=key, table="src", as_of_column="snapshot_date")


def _rids(conn: sa.Connection, spec: SourceSpec, part: Partition, stream: bool = True) -> list[int]:
    """One partition's rows through the driver; the streaming reader (if ``stream``) reads the same."""
    bound = [r[0] for r in conn.execute(select_rows(conn, spec, AS_OF, ["rid"], partition=part))]
    if stream:
        streamed = [int(v) for c in read_chunks(conn, spec, AS_OF, ["rid"], 40, partition=part) for v in c["rid"]]
        assert sorted(streamed) == sorted(bound)
    return bound


def _streamed(parts: list[Partition]) -> set[int]:
    """Which partitions also go through the streaming reader: all of a few, else the first,
    the last and those bounded by the awkward texts (one ADBC connection per read)."""
    if len(parts) <= 8:
        return {p.index for p in parts}
    odd = [p.index for p in parts if any(ch in str(p.lower) + str(p.upper) for ch in "'\\-üß ")]
    return {0, len(parts) - 1, *odd[:6]}


@pytest.mark.parametrize("n", [1, 3, 7, 1000])
@pytest.mark.parametrize("kind", list(KEYS))
def test_partitions_read_every_row_exactly_once(engine: sa.Engine, kind: str, n: int) -> None:
    spec = _spec(KEYS[kind])
    with engine.connect() as conn:
        parts = key_partitions(conn, spec, AS_OF, n)
        streamed = _streamed(parts)
        read = [_rids(conn, spec, p, stream=p.index in streamed) for p in parts]
    counts = Counter(rid for rids in read for rid in rids)
    assert sorted(counts) == list(range(N)) and set(counts.values()) == {1}
    assert 1 <= len(parts) <= n and [p.index for p in parts] == list(range(len(parts)))
    assert all(p.count == len(parts) for p in parts) and [p.nulls for p in parts].count(True) == 1
    assert all(read), "a partition came out empty"


def test_partitions_are_about_equal(engine: sa.Engine) -> None:
    spec = _spec(KEYS["int"])
    with engine.connect() as conn:
        parts = key_partitions(conn, spec, AS_OF, 3)
        sizes = [len(_rids(conn, spec, p)) for p in parts]
    nulls = sum(1 for r in _rows()[:N] if r["k_int"] is None)
    sizes[0] -= nulls  # the NULL keys ride with the first partition
    assert len(sizes) == 3 and max(sizes) - min(sizes) <= 6, sizes


def test_more_partitions_than_keys_gives_one_per_distinct_key(engine: sa.Engine) -> None:
    spec = _spec(KEYS["text+int"])
    distinct = {(r["k_text"], r["k_i2"]) for r in _rows()[:N] if r["k_text"] is not None and r["k_i2"] is not None}
    with engine.connect() as conn:
        parts = key_partitions(conn, spec, AS_OF, 10 * N)
    assert len(parts) == len(distinct)


def test_rows_with_a_null_key_column_are_read_once(engine: sa.Engine) -> None:
    """(a, NULL) < (b, 1) is true in SQL when a < b: the ranges must still leave it out."""
    spec = _spec(KEYS["text+int"])
    with engine.connect() as conn:
        parts = key_partitions(conn, spec, AS_OF, 5)
        owners = {rid: p.index for p in parts for rid in _rids(conn, spec, p)}
    partial = [r["rid"] for r in _rows()[:N] if (r["k_text"] is None) != (r["k_i2"] is None)]
    assert partial and {owners[rid] for rid in partial} == {0}


def test_a_query_source_partitions_too(engine: sa.Engine, tmp_path: Path) -> None:
    (tmp_path / "q.sql").write_text("SELECT rid, k_text, k_i2 FROM src WHERE snapshot_date = :as_of -- all")
    spec = SourceSpec(job="j", key=("k_text", "k_i2"), query=tmp_path / "q.sql")
    with engine.connect() as conn:
        parts = key_partitions(conn, spec, AS_OF, 4)
        rids = sorted(rid for p in parts for rid in _rids(conn, spec, p))
    assert len(parts) == 4 and rids == list(range(N))


def test_an_empty_day_is_one_partition_and_n_below_one_is_refused(engine: sa.Engine) -> None:
    spec = _spec(KEYS["int"])
    with engine.connect() as conn:
        assert key_partitions(conn, spec, AS_OF.replace(day=1), 4) == [Partition(0, 1)]
        with pytest.raises(UsageError, match="at least 1"):
            key_partitions(conn, spec, AS_OF, 0)


def test_a_partition_is_read_through_an_index_on_the_keys(engine: sa.Engine) -> None:
    spec = _spec(KEYS["text+int"])
    with engine.connect() as conn:
        middle = key_partitions(conn, spec, AS_OF, 3)[1]
        stmt = select_rows(conn, spec, AS_OF, ["rid"], partition=middle)
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SET enable_seqscan = off"))
            plan = "\n".join(r[0] for r in conn.execute(sa.text("EXPLAIN " + render_sql(stmt))))
            assert "src_keys" in plan and "ROW(k_text, k_i2) >=" in plan.replace('"', ""), plan
        else:
            compiled = stmt.compile(conn)
            params = tuple(compiled.params[k] for k in compiled.positiontup or ())
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params))
            assert "USING INDEX src_keys ((k_text,k_i2)>(?,?)" in plan.replace(">=", ">"), plan
