"""Read once, score many: jobs of one invocation that read the same source rows read them
once, and each still publishes its own output, all or nothing, on its own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from batch_scorer import api
from tests.helpers import (
    AS_OF,
    FEATURES,
    features_frame,
    load_table,
    preprocessor,
    published,
    query,
    save_model,
    train,
    write_config,
)

TEN = [f"model{i}" for i in range(10)]


def _ten_jobs_on_one_source(tmp_path: Path, url: str, rows: int = 400,
                            parallel: int | None = None) -> tuple[Path, object, dict]:
    """Ten jobs on one table; ``parallel`` None: the default ``defaults.parallel_jobs``."""
    frame = features_frame(rows, seed=2)
    load_table(url, frame)
    models = {}
    for i, name in enumerate(TEN):
        models[name] = train("binary" if i % 2 else "forest", features_frame(300, seed=60 + i))
        save_model(models[name], tmp_path / "models" / f"{name}.joblib")
    jobs = {name: {"model": {"path": f"models/{name}.joblib"},
                   "source": {"table": "features", "key": ["entity_id"], "as_of_column": "snapshot_date"},
                   "output": {"table": f"out_{name}", "pass_through": ["region"]}, "chunk_size": 150}
            for name in TEN}
    defaults = {} if parallel is None else {"parallel_jobs": parallel}
    return write_config(tmp_path, url, jobs, defaults=defaults), frame, models


@contextlib.contextmanager
def _source_statements() -> Iterator[list[str]]:
    """The SQL statements that name the source table, run by any engine inside the block."""
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "FROM features" in statement:
            statements.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", count)


def _pg_scans(url: str, table: str) -> int:
    [(n,)] = query(url, "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables "
                        "WHERE relname = :t AND schemaname = current_schema()", t=table)
    return int(n)


@pytest.mark.postgres
def test_ten_jobs_on_one_source_read_it_once_on_postgres(tmp_path: Path, pg_url: str) -> None:
    cfg, frame, models = _ten_jobs_on_one_source(tmp_path, pg_url)
    before = _pg_scans(pg_url, "features")
    results = api.run(cfg, all_jobs=True, as_of=AS_OF)
    assert results.exit_code == 0, [r.error for r in results]
    # Backends report their table statistics when they end: the run's have (its engine is disposed).
    scans = _pg_scans(pg_url, "features") - before
    assert scans <= 2, f"the source was scanned {scans} times (one probe row and one read expected)"
    for name, model in models.items():
        out = published(pg_url, f"out_{name}").sort_values("entity_id")
        np.testing.assert_array_equal(out["prediction"], model.predict(frame.sort_values("entity_id")[FEATURES]))


@pytest.mark.parametrize(("parallel", "reads"), [(None, 1), (2, 5)])
def test_ten_jobs_on_one_source_read_it_once_on_sqlite(tmp_path: Path, sqlite_url: str, parallel: int | None,
                                                       reads: int) -> None:
    """At the default ``parallel_jobs`` (10) the ten jobs share one read; with 2 at a
    time, each read serves the two jobs running: five reads."""
    cfg, frame, models = _ten_jobs_on_one_source(tmp_path, sqlite_url, parallel=parallel)
    with _source_statements() as statements:
        results = api.run(cfg, all_jobs=True, as_of=AS_OF)
    assert results.exit_code == 0, [r.error for r in results]
    streams = [s for s in statements if "LIMIT" not in s]
    assert len(streams) == reads, streams
    assert len(statements) - len(streams) <= 1, statements  # and at most one probe row
    for name, model in models.items():
        out = published(sqlite_url, f"out_{name}").sort_values("entity_id")
        np.testing.assert_array_equal(out["prediction"], model.predict(frame.sort_values("entity_id")[FEATURES]))


def test_one_bad_model_among_ten_on_one_source_fails_only_its_own_job(tmp_path: Path, db_url: str) -> None:
    cfg, frame, _ = _ten_jobs_on_one_source(tmp_path, db_url)
    red = features_frame(300, seed=1)
    red = red[red["color"] == "red"]
    strict = Pipeline([("prep", preprocessor(handle_unknown="error")), ("m", LogisticRegression())])
    save_model(strict.fit(red[FEATURES], (red["x2"] > 0).astype(int)), tmp_path / "models" / "model3.joblib")
    results = api.run(cfg, all_jobs=True, as_of=AS_OF)
    by_job = {r.job: r for r in results}
    assert by_job["model3"].status == "failed" and by_job["model3"].exit_code == 1
    assert results.exit_code == 1
    assert all(by_job[n].status == "succeeded" for n in TEN if n != "model3")
    for name in TEN:
        rows = query(db_url, f'SELECT count(*) FROM "out_{name}"')[0][0] if name != "model3" else None
        if rows is not None:
            assert rows == len(frame)
    assert query(db_url, "SELECT count(*) FROM out_model3") == [(0,)]


def test_validate_and_backfill_ask_a_shared_source_once(tmp_path: Path, sqlite_url: str) -> None:
    """Planning many jobs on one source (validate, a backfill's up-front check) probes it
    once per as_of, not once per job: one first-row query for the ten jobs."""
    cfg, _, _ = _ten_jobs_on_one_source(tmp_path, sqlite_url)
    with _source_statements() as statements:
        checks = api.validate(cfg)
    assert all(c.ok for c in checks), [c.message for c in checks if not c.ok]
    assert len(statements) == 1, statements
    with _source_statements() as statements:
        results = api.backfill(cfg, "model0", start=AS_OF, end=AS_OF)
    assert results.exit_code == 0
    assert len([s for s in statements if "LIMIT" in s]) == 1, statements  # the up-front check's, reused
