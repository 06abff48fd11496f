"""The fast path is exact: what it writes equals the source and the model's own output.

Issue 4: PostgreSQL reads through ADBC (binary COPY -> Arrow) and writes with
binary COPY encoded by numpy; SQLite goes through SQLAlchemy. Every test here
runs on real databases with small chunks, so rows cross chunk (and Arrow
batch) boundaries.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from batch_scorer.config import config_from_dict, load_config
from batch_scorer.executors import threads
from batch_scorer.runtime import progress
from batch_scorer.runtime.plan import source_spec
from batch_scorer.storage.db import create_engine, libpq_uri
from batch_scorer.storage.sinks import staging
from batch_scorer.storage.sources.sql import read_chunks
from tests.helpers import cli_run, features_frame, save_model, train, write_config

AS_OF = date(2026, 3, 31)
N = 300


def _source_table(md: sa.MetaData, with_tz: bool) -> sa.Table:
    cols = [
        sa.Column("region", sa.Text),
        sa.Column("entity_id", sa.Integer),
        sa.Column("snapshot_date", sa.Date),
        sa.Column("x1", sa.Float(53)),
        sa.Column("x2", sa.Float(53)),
        sa.Column("x3", sa.BigInteger),
        sa.Column("color", sa.Text),
        sa.Column("note", sa.Text),
        sa.Column("born", sa.Date),
        sa.Column("visits", sa.Integer),
        sa.Column("active", sa.Boolean),
        sa.Column("balance", sa.Numeric(14, 4)),
        sa.Column("seen_at", sa.DateTime),
    ]
    if with_tz:
        cols.append(sa.Column("seen_tz", sa.DateTime(timezone=True)))
    return sa.Table("features", md, *cols)


PASS = ["note", "born", "visits", "active", "balance", "seen_at"]


def _rows(n: int, with_tz: bool) -> list[dict[str, Any]]:
    frame = features_frame(n, seed=3)
    rng = np.random.default_rng(7)
    out = []
    for i, r in enumerate(frame.itertuples(index=False)):
        row = {
            "region": ["north", "south", "ünïcode ✓", ""][i % 4],
            "entity_id": i // 4 + 1,
            "snapshot_date": AS_OF,
            "x1": None if pd.isna(r.x1) else float(r.x1),
            "x2": float(r.x2),
            "x3": int(r.x3),
            "color": r.color,
            "note": None if i % 5 == 0 else f"note {i} 'quoted' \"and\" \\ tab\t",
            "born": None if i % 6 == 0 else date(1950, 1, 1) + timedelta(days=int(rng.integers(0, 30000))),
            "visits": None if i % 7 == 0 else int(rng.integers(-(2**31), 2**31 - 1)),
            "active": None if i % 3 == 0 else bool(i % 2),
            "balance": None if i % 8 == 0 else Decimal(f"{int(rng.integers(-10**9, 10**9))}.{i % 10000:04d}"),
            "seen_at": None if i % 9 == 0 else datetime(1999, 12, 31, 23, 59, 59, 999999) + timedelta(
                microseconds=int(rng.integers(0, 10**15))
            ),
        }
        if with_tz:
            row["seen_tz"] = None if i % 10 == 0 else datetime(2026, 3, 1, tzinfo=UTC) + timedelta(
                microseconds=int(rng.integers(-(10**14), 10**14))
            )
        out.append(row)
    return out


def _setup(url: str, folder: Path, kind: str, chunk_size: int, pass_through: list[str]) -> tuple[Path, Any]:
    pg = url.startswith("postgresql")
    engine = create_engine(url)
    md = sa.MetaData()
    table = _source_table(md, with_tz=pg)
    try:
        md.create_all(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), _rows(N, with_tz=pg))
    finally:
        engine.dispose()
    model = train(kind)
    save_model(model, folder / "models" / "m.joblib")
    job = {
        "model": {"path": "models/m.joblib"},
        "source": {"table": "features", "key": ["region", "entity_id"], "as_of_column": "snapshot_date"},
        "output": {"table": "predictions", "pass_through": pass_through + (["seen_tz"] if pg else [])},
        "chunk_size": chunk_size,
    }
    return write_config(folder, url, {"churn": job}), model


def _read(url: str, sql: str) -> pd.DataFrame:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            result = conn.execute(sa.text(sql))
            return pd.DataFrame([tuple(r) for r in result], columns=list(result.keys()), dtype=object)
    finally:
        engine.dispose()


def _assert_exact(url: str, model: Any, pass_through: list[str]) -> None:
    source = _read(url, "SELECT * FROM features ORDER BY region, entity_id")
    out = _read(url, "SELECT * FROM predictions ORDER BY region, entity_id")
    assert len(out) == len(source) == N
    cols = ["region", "entity_id", *pass_through] + (["seen_tz"] if "seen_tz" in source else [])
    for col in cols:
        assert out[col].tolist() == source[col].tolist(), col
    # The model's own output on the rows as pandas reads them.
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            frame = pd.read_sql(sa.text("SELECT * FROM features ORDER BY region, entity_id"), conn)
    finally:
        engine.dispose()
    X = frame[list(model.feature_names_in_)]
    proba = model.predict_proba(X)
    expected_prediction = np.asarray(model.classes_)[proba.argmax(axis=1)]
    assert out["prediction"].tolist() == expected_prediction.tolist()
    expected_score = proba[:, 1] if proba.shape[1] == 2 else proba.max(axis=1)
    np.testing.assert_allclose(out["score"].astype(float).to_numpy(), expected_score, rtol=1e-12, atol=0)
    assert {str(v) for v in out["as_of"]} == {AS_OF.isoformat()}
    assert out["run_id"].nunique() == 1 and out["scored_at"].nunique() == 1
    assert all(str(t).endswith("+00:00") for t in out["scored_at"])


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_output_equals_source_and_model_row_by_row(db_url: str, tmp_path: Path, kind: str) -> None:
    """Composite text+int key, NULLs everywhere, categoricals, pass-through of every
    common type (text, date, integer, boolean, numeric, timestamp, timestamptz on
    PostgreSQL); chunks of 37 rows so values cross chunk boundaries."""
    config, model = _setup(db_url, tmp_path, kind, 37, PASS)
    result = cli_run(config, "run", "churn", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 0, result.output
    _assert_exact(db_url, model, PASS)


def test_a_chunk_scored_in_halves_on_two_threads_is_exact(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One chunk of all N rows, split across the scoring threads (threshold lowered to N/4)."""
    monkeypatch.setattr(threads, "PARALLEL_MIN_ROWS", N // 4)
    monkeypatch.setenv("BATCH_SCORER_SCORING_THREADS", "2")
    used: list[int] = []
    real_pool = threads.scoring_pool
    monkeypatch.setattr(threads, "scoring_pool", lambda settings: used.append(1) or real_pool(settings))
    config, model = _setup(db_url, tmp_path, "multiclass", N, PASS)
    result = cli_run(config, "run", "churn", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 0, result.output
    assert used, "the chunk was not split across the scoring threads"
    _assert_exact(db_url, model, PASS)


def test_feature_columns_passed_through_keep_their_exact_values(db_url: str, tmp_path: Path) -> None:
    """A column that is both a model feature and a pass-through column is written as
    the source holds it (the model still sees the converted feature)."""
    passing = ["x1", "x3", "color", "note"]
    config, model = _setup(db_url, tmp_path, "binary", 50, passing)
    result = cli_run(config, "run", "churn", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 0, result.output
    _assert_exact(db_url, model, passing)


@pytest.mark.postgres
def test_psycopg2_url_gets_the_same_exact_output(pg_url: str, tmp_path: Path) -> None:
    url = pg_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    config, model = _setup(url, tmp_path, "binary", 64, PASS)
    result = cli_run(config, "run", "churn", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 0, result.output
    _assert_exact(url, model, PASS)


def test_rows_are_streamed_in_chunks_of_chunk_size(db_url: str, tmp_path: Path) -> None:
    """Memory is bounded by the chunk size: the source arrives in many small chunks,
    never as one table."""
    config, _ = _setup(db_url, tmp_path, "binary", 40, PASS)
    cfg = load_config(config)
    job = source_spec(cfg, cfg.job("churn"))
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            cols = ["region", "entity_id", "x1", "x2", "x3", "color", *PASS]
            sizes = [len(c) for c in read_chunks(conn, job, AS_OF, cols, 40, ["x1", "x2", "x3", "color"])]
    finally:
        engine.dispose()
    assert sum(sizes) == N
    assert len(sizes) == -(-N // 40)
    assert max(sizes) <= 40


@pytest.mark.postgres
def test_fast_reader_stops_cleanly_when_the_run_stops_early(pg_url: str, tmp_path: Path) -> None:
    config, _ = _setup(pg_url, tmp_path, "binary", 10, PASS)
    cfg = load_config(config)
    job = source_spec(cfg, cfg.job("churn"))
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            chunks = read_chunks(conn, job, AS_OF, ["region", "entity_id", "x1"], 10, ["x1"])
            first = next(chunks)
            chunks.close()  # joins the reader thread
    finally:
        engine.dispose()
    assert len(first) == 10
    import threading

    assert not [t for t in threading.enumerate() if t.name == "bs-reader"]


@pytest.mark.postgres
@pytest.mark.parametrize("held", [True, False], ids=["held_until_publish", "streamed_by_the_writer"])
@pytest.mark.parametrize("driver", ["postgresql", "postgresql+psycopg2"])
def test_a_failing_copy_fails_the_run_and_publishes_nothing(
    pg_url: str, tmp_path: Path, driver: str, held: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error in the COPY (here: a value too big for the existing output column) fails
    the run, names the column but not the value, and publishes nothing: in the COPY at
    publish of a small output's held rows, and on the writer thread that streams a larger
    one's (MEMORY_ROWS 0: every frame streamed)."""
    if not held:
        monkeypatch.setattr(staging, "MEMORY_ROWS", 0)
    pg_url = pg_url.replace("postgresql://", driver + "://", 1)
    config, _ = _setup(pg_url, tmp_path, "binary", 50, ["visits"])
    engine = create_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TABLE predictions (job varchar(100) NOT NULL, region text, entity_id integer, "
                "as_of date NOT NULL, model_version varchar(64) NOT NULL, run_id bigint NOT NULL, "
                "scored_at timestamptz NOT NULL, prediction bigint, score float8, visits smallint, "
                "seen_tz timestamptz)"
            )
    finally:
        engine.dispose()
    result = cli_run(config, "run", "churn", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 1, result.output
    biggest = max(abs(v) for v in _read(pg_url, "SELECT visits FROM features WHERE visits IS NOT NULL")["visits"])
    assert "'visits'" in result.output and str(biggest) not in result.output
    rows = _read(pg_url, "SELECT count(*) AS n FROM predictions")
    assert rows["n"].tolist() == [0]
    runs = _read(pg_url, "SELECT status FROM scoring_runs")
    assert runs["status"].tolist() == ["failed"]


@pytest.mark.postgres
def test_reader_errors_name_the_job_and_hide_the_password(pg_url: str, tmp_path: Path) -> None:
    url = sa.engine.make_url(pg_url).set(password="s3cret-pw").render_as_string(hide_password=False)
    (tmp_path / "q.sql").write_text("SELECT 1 AS entity_id, 1.0 / (x - x) AS x1 FROM (SELECT 1 AS x) s")
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    job = {
        "model": {"path": "models/m.joblib"},
        "source": {"query": "q.sql", "key": ["entity_id"]},
        "output": {"table": "predictions"},
        "features": ["x1", "x2", "x3", "color"],
    }
    config = write_config(tmp_path, url, {"churn": job})
    result = cli_run(config, "run", "churn", "--as-of", AS_OF.isoformat())
    assert result.exit_code != 0
    assert "s3cret-pw" not in result.output


def test_libpq_uri_keeps_connection_options() -> None:
    url = sa.engine.make_url("postgresql+psycopg2://u:p%40ss@db.example:6543/app?options=-csearch_path%3Dx")
    uri = libpq_uri(url)
    assert uri.startswith("postgresql://u:p%40ss@db.example:6543/app?")
    assert "search_path" in uri


def test_progress_logs_rows_and_rate_off_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="batch_scorer.runtime.progress"):
        with progress.row_progress(0.0, interactive=False) as update:
            update("churn", 7, 50_000, 2.0)
            update("churn", 7, 100_000, 4.0)
    lines = [r.getMessage() for r in caplog.records if r.name == "batch_scorer.runtime.progress"]
    assert len(lines) >= 2
    assert "job churn run 7" in lines[-1] and "100000 rows" in lines[-1] and "25000 rows/s" in lines[-1]


def test_progress_bar_on_a_terminal_shows_each_job_with_rows_and_rate() -> None:
    import io

    from rich.console import Console

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    with progress.row_progress(10.0, interactive=True, console=console) as update:
        update("churn.DE", 3, 10_000, 2.0)
        update("ltv", 4, 20_000, 1.0)
        console.file.flush()
        shown = screen.getvalue()
    assert "churn.DE (run 3)" in shown and "10,000 rows" in shown and "5,000 rows/s" in shown
    assert "ltv (run 4)" in shown and "20,000 rows" in shown


def test_model_threads_leave_cores_for_reader_and_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCH_SCORER_MODEL_THREADS", raising=False)
    assert config_from_dict({}).runtime.resolved_model_threads() >= 1
    monkeypatch.setenv("BATCH_SCORER_MODEL_THREADS", "3")
    assert config_from_dict({}).runtime.resolved_model_threads() == 3
