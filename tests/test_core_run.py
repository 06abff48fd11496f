"""The core run: predictions equal the model's own output, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from batch_scorer import api
from batch_scorer.storage.db import create_engine
from tests.helpers import (
    AS_OF,
    FEATURES,
    OTHER_AS_OF,
    cli_run,
    features_frame,
    job,
    load_table,
    published,
    query,
    save_model,
    train,
    write_config,
)


def _setup(tmp_path: Path, url: str, kind: str, n: int = 600, **job_kw: object) -> tuple[Path, object, pd.DataFrame]:
    frame = features_frame(n, seed=3)
    load_table(url, frame)
    model = train(kind)
    save_model(model, tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, url, {"j": job(**job_kw)})  # type: ignore[arg-type]
    return cfg, model, frame


@pytest.mark.parametrize("kind", ["binary", "multiclass", "regressor"])
def test_predictions_equal_the_models_own_output(tmp_path: Path, db_url: str, kind: str) -> None:
    cfg, model, frame = _setup(tmp_path, db_url, kind, pass_through=["region", "note"], chunk_size=128)
    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 0, result.output

    out = published(db_url).sort_values("entity_id").reset_index(drop=True)
    assert len(out) == len(frame)
    expected_pred = model.predict(frame[FEATURES])
    assert list(out["entity_id"]) == list(frame["entity_id"])
    if kind == "regressor":
        np.testing.assert_allclose(out["prediction"].astype(float), expected_pred, rtol=1e-9)
        assert out["score"].isna().all()
    else:
        assert list(out["prediction"]) == list(expected_pred)
        proba = model.predict_proba(frame[FEATURES])
        want = proba[:, 1] if kind == "binary" else proba.max(axis=1)
        np.testing.assert_allclose(out["score"].astype(float), want, rtol=1e-9)
    assert list(out["region"]) == list(frame["region"])
    assert list(out["note"]) == list(frame["note"])
    assert set(out["job"]) == {"j"}
    assert {str(v)[:10] for v in out["as_of"]} == {AS_OF.isoformat()}
    assert out["run_id"].nunique() == 1


def test_scored_at_is_timezone_aware_utc(tmp_path: Path, db_url: str) -> None:
    cfg, _, _ = _setup(tmp_path, db_url, "binary", n=50)
    assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    engine = create_engine(db_url)
    try:
        from batch_scorer.storage.schema import UTCDateTime

        t = sa.table("predictions", sa.column("scored_at", UTCDateTime()))
        with engine.connect() as conn:
            value = conn.execute(sa.select(t.c.scored_at).limit(1)).scalar_one()
    finally:
        engine.dispose()
    assert value.tzinfo is not None and value.utcoffset().total_seconds() == 0
    raw = query(db_url, "SELECT CAST(scored_at AS TEXT) FROM predictions LIMIT 1")[0][0]
    assert raw.endswith("+00:00") or raw.endswith("+00")


def test_composite_key_and_sql_source_with_as_of(tmp_path: Path, db_url: str) -> None:
    march = features_frame(300, seed=5, as_of=AS_OF)
    feb = features_frame(200, seed=6, as_of=OTHER_AS_OF)
    load_table(db_url, pd.concat([march, feb]))
    model = train("binary")
    save_model(model, tmp_path / "models" / "m.joblib")
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "f.sql").write_text(
        "-- rows of one snapshot, :as_of bound by the tool\n"
        "SELECT entity_id, region, x1, x2, x3, color, note FROM features\n"
        "WHERE snapshot_date = :as_of;\n"
    )
    cfg = write_config(
        tmp_path, db_url,
        {"j": job(query="sql/f.sql", key=["entity_id", "region"], pass_through=["note"])},
    )
    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 0, result.output
    out = published(db_url).sort_values(["entity_id", "region"]).reset_index(drop=True)
    assert len(out) == 300
    want = model.predict_proba(march[FEATURES])[:, 1]
    np.testing.assert_allclose(out["score"].astype(float), want, rtol=1e-9)
    assert list(out["region"]) == list(march["region"])
    cols = {c["name"] for c in sa.inspect(create_engine(db_url)).get_columns("predictions")}
    assert {"entity_id", "region", "note"} <= cols


def test_rerun_replaces_rows_and_never_duplicates(tmp_path: Path, db_url: str) -> None:
    cfg, _, frame = _setup(tmp_path, db_url, "binary", n=200)
    for _ in range(3):
        assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    rows = query(db_url, "SELECT count(*), count(DISTINCT entity_id), count(DISTINCT run_id) FROM predictions")
    assert rows == [(200, 200, 1)]
    statuses = query(db_url, "SELECT status FROM scoring_runs ORDER BY run_id")
    assert [s for (s,) in statuses] == ["succeeded"] * 3


def test_latest_view_has_one_row_per_entity_from_the_latest_as_of(tmp_path: Path, db_url: str) -> None:
    load_table(db_url, pd.concat([features_frame(50, 1, OTHER_AS_OF), features_frame(50, 2, AS_OF)]))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, db_url, {"j": job()})
    for day in (OTHER_AS_OF, AS_OF):
        assert cli_run(cfg, "run", "j", "--as-of", day.isoformat()).exit_code == 0
    # A second model version scoring the same as_of: the later run wins.
    save_model(train("forest"), tmp_path / "models" / "m.joblib")
    assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    rows = query(db_url, "SELECT count(*), count(DISTINCT entity_id), max(run_id), min(run_id), "
                 "min(CAST(as_of AS TEXT)) FROM predictions_latest")
    assert rows[0][:4] == (50, 50, 3, 3)
    assert rows[0][4].startswith(AS_OF.isoformat())
    # One set per job and as_of: the second model version's run replaced the first's rows
    # (the ledger keeps both runs).
    assert query(db_url, "SELECT count(*) FROM predictions")[0][0] == 100
    assert query(db_url, "SELECT count(*) FROM scoring_runs WHERE status = 'succeeded'")[0][0] == 3


def test_run_all_scores_every_job_into_its_own_table(tmp_path: Path, sqlite_url: str) -> None:
    load_table(sqlite_url, features_frame(100))
    save_model(train("binary"), tmp_path / "models" / "a.joblib")
    save_model(train("regressor"), tmp_path / "models" / "b.joblib")
    cfg = write_config(tmp_path, sqlite_url, {
        "a": job(model="models/a.joblib"),
        "b": job(model="models/b.joblib", output="values_out"),
    })
    result = cli_run(cfg, "run", "--all", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 0, result.output
    assert query(sqlite_url, "SELECT count(*) FROM predictions") == [(100,)]
    assert query(sqlite_url, "SELECT count(*) FROM values_out") == [(100,)]
    assert query(sqlite_url, "SELECT count(*) FROM values_out_latest") == [(100,)]


def test_api_works_from_a_notebook(tmp_path: Path, sqlite_url: str) -> None:
    cfg, _, _ = _setup(tmp_path, sqlite_url, "binary", n=30)
    results = api.run(str(cfg), ["j"], as_of=AS_OF)
    assert [r.status for r in results] == ["succeeded"]
    assert results[0].rows_scored == 30
    assert [r.status for r in api.runs(str(cfg))] == ["succeeded"]


def test_api_names_the_ledger_row_of_a_failed_run(tmp_path: Path, sqlite_url: str) -> None:
    cfg, _, _ = _setup(tmp_path, sqlite_url, "binary", n=30)
    failed = api.run(str(cfg), ["j"], as_of=OTHER_AS_OF)  # no rows for that date

    assert [r.status for r in failed] == ["failed"] and "returned no rows" in (failed[0].error or "")
    ledger = query(sqlite_url, "SELECT run_id, status FROM scoring_runs")
    assert ledger == [(failed[0].run_id, "failed")]


@pytest.mark.parametrize("driver", ["postgresql", "postgresql+psycopg2", "postgresql+psycopg"])
def test_plain_and_explicit_postgresql_drivers_work(tmp_path: Path, pg_url: str, driver: str) -> None:
    url = driver + pg_url[pg_url.index("://"):]
    cfg, model, frame = _setup(tmp_path, url, "binary", n=80, pass_through=["region"])
    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 0, result.output
    out = published(pg_url).sort_values("entity_id")
    np.testing.assert_allclose(out["score"], model.predict_proba(frame[FEATURES])[:, 1], rtol=1e-9)


@pytest.mark.parametrize("n", [4_999, 5_001, 7_300])
def test_a_run_stages_in_memory_then_spills_and_publishes_the_same_rows(tmp_path: Path, db_url: str, n: int) -> None:
    """A run holds its first 5,000 rows in memory and writes them at publish (SQLite: an
    INSERT; PostgreSQL: one COPY on the publishing thread); past that they spill, with the
    rows held so far (SQLite: into a TEMP table copied in at publish; PostgreSQL: to the
    COPY writer thread, in the open transaction). Both publish every row once with the
    run's constants, and the re-run replaces."""
    from batch_scorer.storage.sinks.staging import MEMORY_ROWS

    assert MEMORY_ROWS == 5_000
    cfg, model, frame = _setup(tmp_path, db_url, "binary", n=n, pass_through=["region", "note"], chunk_size=1_000)
    for _ in range(2):
        assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    out = published(db_url).sort_values("entity_id").reset_index(drop=True)
    assert list(out["entity_id"]) == list(frame["entity_id"])  # each row once
    np.testing.assert_allclose(out["score"].astype(float), model.predict_proba(frame[FEATURES])[:, 1], rtol=1e-9)
    assert list(out["note"]) == list(frame["note"]) and list(out["region"]) == list(frame["region"])
    [(run_id, version)] = query(db_url, "SELECT run_id, model_version FROM scoring_runs WHERE status = "
                                            "'succeeded' AND replaced_by IS NULL")
    assert set(out["run_id"]) == {run_id} and set(out["model_version"]) == {version} and set(out["job"]) == {"j"}
    assert {str(v)[:10] for v in out["as_of"]} == {AS_OF.isoformat()}
