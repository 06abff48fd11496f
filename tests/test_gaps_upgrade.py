"""A database made by part 1 (its ``scoring_runs`` with the four old statuses, NOT NULL model
columns and none of the part-2 columns; its ``predictions`` table and ``_latest`` view)
is upgraded in place by the first run of today's code: that run succeeds and replaces
part 1's set of the same as_of, every old ledger row keeps its values, the new columns
exist, and the new statuses (invalid, skipped, retracted) are written by the commands
that make them. On SQLite the CHECK is widened by copying the table (storage/ddl.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from batch_scorer.storage.db import create_engine
from tests.gaps_support import rows_of_query
from tests.helpers import AS_OF, OTHER_AS_OF, cli_run, features_frame, job, load_table, save_model, train, write_config

# Part 1's DDL, as `git show cca600c:sql/schema_<dialect>.sql` has it (the tool's tables),
# and the predictions table and view part 1 made for a job keyed by entity_id.
_PART1_LEDGER = """
CREATE TABLE scoring_runs (
    run_id {serial} NOT NULL,
    job VARCHAR(100) NOT NULL,
    model_version VARCHAR(64) NOT NULL,
    model_sha256 VARCHAR(64) NOT NULL,
    model_sklearn_version VARCHAR(32),
    as_of DATE NOT NULL,
    "trigger" VARCHAR(16) NOT NULL,
    status VARCHAR(16) NOT NULL,
    started_at {timestamp} NOT NULL,
    finished_at {timestamp},
    rows_read BIGINT DEFAULT '0' NOT NULL,
    rows_scored BIGINT DEFAULT '0' NOT NULL,
    rows_rejected BIGINT DEFAULT '0' NOT NULL,
    output_table VARCHAR(130),
    error TEXT,
    host VARCHAR(255) NOT NULL,
    pid INTEGER NOT NULL,
    PRIMARY KEY (run_id),
    CONSTRAINT ck_scoring_runs_status CHECK (status IN ('running', 'succeeded', 'failed', 'abandoned')),
    CONSTRAINT ck_scoring_runs_trigger CHECK ("trigger" IN ('manual', 'cron', 'schedule', 'backfill'))
);
CREATE INDEX ix_scoring_runs_job_as_of ON scoring_runs (job, as_of, model_version);
CREATE INDEX ix_scoring_runs_job_status ON scoring_runs (job, status);
CREATE TABLE rejected_rows (
    id {serial} NOT NULL, run_id BIGINT NOT NULL, job VARCHAR(100) NOT NULL, "key" TEXT,
    reason TEXT NOT NULL, PRIMARY KEY (id)
);
CREATE INDEX ix_rejected_rows_run_id ON rejected_rows (run_id);
CREATE TABLE job_locks (
    job VARCHAR(100) NOT NULL, run_id BIGINT, host VARCHAR(255) NOT NULL, pid INTEGER NOT NULL,
    acquired_at {timestamp} NOT NULL, PRIMARY KEY (job)
);
CREATE TABLE predictions (
    job VARCHAR(100) NOT NULL, entity_id BIGINT, as_of DATE NOT NULL, model_version VARCHAR(64) NOT NULL,
    run_id BIGINT NOT NULL, scored_at {timestamp} NOT NULL, prediction BIGINT, score {double}
);
CREATE UNIQUE INDEX ix_predictions_latest ON predictions (job, entity_id, as_of, run_id);
CREATE INDEX ix_predictions_run ON predictions (run_id);
CREATE VIEW predictions_latest AS SELECT ranked.job, ranked.entity_id, ranked.as_of, ranked.model_version,
    ranked.run_id, ranked.scored_at, ranked.prediction, ranked.score
FROM (SELECT predictions.job AS job, predictions.entity_id AS entity_id, predictions.as_of AS as_of,
    predictions.model_version AS model_version, predictions.run_id AS run_id, predictions.scored_at AS scored_at,
    predictions.prediction AS prediction, predictions.score AS score, row_number() OVER (PARTITION BY
    predictions.job, predictions.entity_id ORDER BY predictions.as_of DESC, predictions.run_id DESC) AS _rn
FROM predictions) AS ranked WHERE ranked._rn = 1
"""
_TYPES = {"sqlite": {"serial": "INTEGER", "timestamp": "DATETIME", "double": "FLOAT"},
          "postgresql": {"serial": "BIGSERIAL", "timestamp": "TIMESTAMP WITH TIME ZONE", "double": "FLOAT(53)"}}

# Part 1's rows: what its runs wrote (SQLite's timestamps in part 1's text format).
_OLD_RUNS = [
    (1, "j", "v1", "a" * 64, "1.4.2", AS_OF, "cron", "succeeded", "2026-03-31 01:00:00.000000+00:00",
     "2026-03-31 01:00:05.250000+00:00", 3, 3, 0, "predictions", None, "old-host", 111),
    (2, "j", "v1", "a" * 64, "1.4.2", OTHER_AS_OF, "manual", "succeeded", "2026-02-28 01:00:00.000000+00:00",
     "2026-02-28 01:00:04.000000+00:00", 2, 2, 0, "predictions", None, "old-host", 112),
    (3, "j", "v1", "a" * 64, "1.4.2", AS_OF, "cron", "failed", "2026-03-30 01:00:00.000000+00:00",
     "2026-03-30 01:00:01.000000+00:00", 10, 0, 10, "predictions", "too many bad rows", "old-host", 113),
    (4, "gone", "v7", "b" * 64, None, AS_OF, "schedule", "abandoned", "2026-03-29 01:00:00.000000+00:00",
     None, 0, 0, 0, "other", "the process stopped", "old-host", 114),
]
_OLD_COLUMNS = ("run_id, job, model_version, model_sha256, model_sklearn_version, CAST(as_of AS TEXT), trigger, "
                "status, CAST(started_at AS TEXT), CAST(finished_at AS TEXT), rows_read, rows_scored, "
                "rows_rejected, output_table, error, host, pid")
_NEW_COLUMNS = {"model_name", "model_registry_version", "replaced_by", "drift_status"}


def _part1_database(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in _PART1_LEDGER.format(**_TYPES[engine.dialect.name]).split(";"):
                conn.exec_driver_sql(statement)
            insert = ("INSERT INTO scoring_runs (run_id, job, model_version, model_sha256, model_sklearn_version, "
                      'as_of, "trigger", status, started_at, finished_at, rows_read, rows_scored, rows_rejected, '
                      "output_table, error, host, pid) VALUES (" + ", ".join(["?"] * 17) + ")")
            if engine.dialect.name == "postgresql":
                insert = insert.replace("?", "%s")
                conn.exec_driver_sql("SELECT setval('scoring_runs_run_id_seq', 4)")
            conn.exec_driver_sql(insert, [tuple(str(v) if k == 5 else v for k, v in enumerate(r)) for r in _OLD_RUNS])
            rows = [("j", e, str(AS_OF), "v1", 1, "2026-03-31 01:00:04.000000+00:00", 1, 0.9) for e in (1, 2, 3)]
            rows += [("j", e, str(OTHER_AS_OF), "v1", 2, "2026-02-28 01:00:03.000000+00:00", 0, 0.1) for e in (1, 2)]
            values = "(" + ", ".join(["%s" if engine.dialect.name == "postgresql" else "?"] * 8) + ")"
            conn.exec_driver_sql(f"INSERT INTO predictions VALUES {values}", rows)  # noqa: S608
    finally:
        engine.dispose()


def _old_values(url: str) -> list[tuple[object, ...]]:
    return rows_of_query(url, f"SELECT {_OLD_COLUMNS} FROM scoring_runs WHERE run_id <= 4 ORDER BY run_id")  # noqa: S608


def test_a_part1_ledger_is_upgraded_in_place_by_the_first_run_and_keeps_every_old_row(
    tmp_path: Path, db_url: str
) -> None:
    _part1_database(db_url)
    before = _old_values(db_url)
    with pytest.raises(sa.exc.IntegrityError):  # part 1's check: no such status yet
        rows_of_query(db_url, "UPDATE scoring_runs SET status = 'retracted' WHERE run_id = 1")
    load_table(db_url, features_frame(50, seed=2))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, db_url, {
        "j": job(),
        "bad": job(model="models/missing.joblib", output="bad_out"),  # invalid: no model file
        "down": job(output="down_out", after=["bad"]),  # skipped: its upstream job did not run
    })

    result = cli_run(cfg, "run", "--all", "--as-of", str(AS_OF))

    assert result.exit_code == 2, result.output  # bad is invalid (exit 2 wins over down's 1)
    engine = create_engine(db_url)
    try:
        columns = {c["name"]: c for c in sa.inspect(engine).get_columns("scoring_runs")}
        tables = set(sa.inspect(engine).get_table_names())
        indexes = {i["name"] for i in sa.inspect(engine).get_indexes("scoring_runs")}
    finally:
        engine.dispose()
    assert _NEW_COLUMNS <= set(columns) and columns["model_version"]["nullable"]
    assert "scoring_runs_upgrading" not in tables
    assert {"ix_scoring_runs_job_status", "ix_scoring_runs_job_as_of"} <= indexes
    assert _old_values(db_url) == before  # every part-1 row as it was
    [(new_run,)] = rows_of_query(db_url, "SELECT run_id FROM scoring_runs WHERE job = 'j' AND run_id > 4")
    assert rows_of_query(db_url, "SELECT run_id, replaced_by, model_name, drift_status FROM scoring_runs "
                                 "WHERE run_id <= 4 ORDER BY run_id") == [
        (1, new_run, None, None), (2, None, None, None), (3, None, None, None), (4, None, None, None)]
    assert rows_of_query(db_url, "SELECT job, status FROM scoring_runs WHERE run_id > 4 ORDER BY job") == [
        ("bad", "invalid"), ("down", "skipped"), ("j", "succeeded")]
    # Part 1's set of this as_of was replaced, its other as_of kept: one set per as_of.
    assert rows_of_query(db_url, "SELECT CAST(as_of AS TEXT), run_id, count(*) FROM predictions "
                                 "GROUP BY as_of, run_id ORDER BY as_of") == [
        (str(OTHER_AS_OF), 2, 2), (str(AS_OF), new_run, 50)]

    retracted = cli_run(cfg, "retract", str(new_run))
    assert retracted.exit_code == 0, retracted.output
    assert rows_of_query(db_url, "SELECT status FROM scoring_runs WHERE run_id = :r", r=new_run) == [("retracted",)]
    assert rows_of_query(db_url, "SELECT DISTINCT run_id FROM predictions_latest") == [(2,)]  # part 1's again
    with pytest.raises(sa.exc.IntegrityError):  # the widened check still refuses what no status is
        rows_of_query(db_url, "UPDATE scoring_runs SET status = 'bogus' WHERE run_id = 4")
