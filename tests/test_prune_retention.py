"""``batch-scorer prune`` keeps exactly what the retention rules promise, on both databases:
the last N (or N days of) as_ofs of predictions and their shadow rows, every row a
``_latest`` view shows (the view reads the same before and after), rejected rows and
ledger rows younger than their limits, the ledger rows whose rows are still kept,
and the monitoring rows of the runs it keeps. ``--dry-run`` counts exactly what a
real prune then deletes, and deletes nothing.

The history pruned: five published as_ofs whose entities drop out over time (so old
as_ofs hold rows ``_latest`` still shows), a replaced run, a failed run, rejected
rows, a shadow table, monitoring rows, and a ledger aged by hand."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from batch_scorer import api
from batch_scorer.config import RetentionConfig
from batch_scorer.dates import today
from batch_scorer.storage import prune as pruning
from batch_scorer.storage.db import create_engine
from batch_scorer.storage.ddl import ensure_table
from batch_scorer.storage.schema import (
    drift,
    feature_profiles,
    output_table,
    scoring_runs,
    shadow_comparisons,
)
from tests.helpers import cli_run, features_frame, job, load_table, query, save_model, train, write_config

TODAY = today("UTC")
DAYS = [TODAY - timedelta(days=4 - i) for i in range(5)]  # D0 .. D4 = today
ENTITIES = [20, 17, 14, 11, 8]  # entities 1..n score on day i
LATEST_SQL = ("SELECT job, entity_id, as_of, run_id, model_version, prediction, score "
              "FROM predictions_latest ORDER BY job, entity_id")
DRIFT_LATEST_SQL = "SELECT job, run_id, feature, status FROM drift_latest ORDER BY feature"


@dataclass(frozen=True)
class History:
    """Runs 1-5 published D0..D4 (one rejected row each), run 6 re-scored D0 (run 1
    replaced), run 7 failed; runs 1, 2 and 7 started 500 days ago, run 3 40 days ago."""

    cfg: Path
    url: str


def day_frame(i: int) -> pd.DataFrame:
    """Day i's feature rows: entities 1..ENTITIES[i] and one row with a NULL key (rejected)."""
    frame = features_frame(ENTITIES[i] + 1, seed=i, as_of=DAYS[i])
    frame["entity_id"] = frame["entity_id"].astype("Int64")
    frame.loc[frame.index[-1], "entity_id"] = pd.NA
    return frame


def make_history(tmp_path: Path, url: str, **retention: Any) -> History:
    load_table(url, pd.concat([day_frame(i) for i in range(5)], ignore_index=True), entity_id=sa.BigInteger())
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, url, {"j": job(max_rejected_fraction=0.5)}, retention=retention)
    done = cli_run(cfg, "backfill", "j", "--start", DAYS[0].isoformat(), "--end", DAYS[-1].isoformat())
    assert done.exit_code == 0, done.output
    again = cli_run(cfg, "run", "j", "--as-of", DAYS[0].isoformat())
    assert again.exit_code == 0, again.output
    failed = cli_run(cfg, "run", "j", "--as-of", (TODAY + timedelta(days=1)).isoformat())
    assert failed.exit_code == 1, failed.output  # no rows for that day
    _add_shadow_and_monitoring(url)
    _age(url, {1: 500, 2: 500, 7: 500, 3: 40})
    assert query(url, "SELECT run_id, status, replaced_by FROM scoring_runs ORDER BY run_id") == [
        (1, "succeeded", 6), (2, "succeeded", None), (3, "succeeded", None), (4, "succeeded", None),
        (5, "succeeded", None), (6, "succeeded", None), (7, "failed", None)]
    return History(cfg, url)


def _add_shadow_and_monitoring(url: str) -> None:
    """What challengers and drift monitoring write for runs: a shadow copy of every row,
    two profile rows per run, a drift row per run but the failed one, a comparison per run."""
    engine = create_engine(url)
    try:
        shadow = output_table("predictions_shadow", [("entity_id", sa.BigInteger())], [], sa.BigInteger(),
                              shadow=True)
        ensure_table(engine, shadow)
        cols = "job, entity_id, as_of, model_version, run_id, scored_at, prediction, score"
        with engine.begin() as conn:
            conn.execute(sa.text(f"INSERT INTO predictions_shadow ({cols}, challenger) "  # noqa: S608
                                 f"SELECT {cols}, 'v2' FROM predictions"))
            for run_id in range(1, 8):
                conn.execute(feature_profiles.insert(), [
                    {"profile_id": f"run:{run_id}", "run_id": run_id, "job": "j", "model_version": "m",
                     "feature": "x1", "kind": "numeric", "bin": b, "rows": 10} for b in (0, 1)])
                conn.execute(shadow_comparisons.insert().values(run_id=run_id, job="j", challenger="v2", rows=5))
                if run_id != 7:
                    conn.execute(drift.insert().values(run_id=run_id, job="j", as_of=date(2026, 1, 1),
                                                       model_version="m", feature="x1", status="ok"))
    finally:
        engine.dispose()


def _age(url: str, days_ago: dict[int, int]) -> None:
    """Move runs' start back in time, as if they had run that many days ago."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for run_id, days in days_ago.items():
                conn.execute(scoring_runs.update().where(scoring_runs.c.run_id == run_id)
                             .values(started_at=datetime.now(UTC) - timedelta(days=days)))
    finally:
        engine.dispose()


def counts(url: str) -> dict[str, int]:
    """Rows of every table prune touches."""
    tables = ("predictions", "predictions_shadow", "rejected_rows", "scoring_runs", "feature_profiles", "drift",
              "shadow_comparisons")
    return {t: query(url, f"SELECT count(*) FROM {t}")[0][0] for t in tables}  # noqa: S608 - fixed names


RULES = {"predictions_keep_as_ofs": 2, "rejected_rows_days": 30, "ledger_days": 400}
# What RULES delete from the history: D0..D2 rows that have a newer row (17 + 14 + 11),
# every shadow row of D0..D2 (20 + 17 + 14), the rejected rows of runs 1-3, and the
# ledger row of run 7 (failed) with its monitoring rows. Run 2 is as old, but its rows
# for entities 15-17 are what _latest shows; run 1 (replaced) is the model's first
# profiled run, the drift reference its later runs compare with: kept too.
EXPECTED = {"predictions": 42, "predictions_shadow": 51, "rejected_rows": 3, "scoring_runs": 1,
            "feature_profiles": 2, "shadow_comparisons": 1}


def _deleted(report: api.PruneReport) -> dict[str, int]:
    return {table: report.rows_of(table) for table in {p.table for p in report.deleted}}


def test_prune_keeps_the_last_as_ofs_every_latest_row_and_young_or_referenced_ledger_rows(
    tmp_path: Path, db_url: str
) -> None:
    h = make_history(tmp_path, db_url, **RULES)
    latest, drift_latest, before = query(db_url, LATEST_SQL), query(db_url, DRIFT_LATEST_SQL), counts(db_url)

    result = cli_run(h.cfg, "prune")
    assert result.exit_code == 0, result.output
    assert "prune: deleted 100 row(s)" in result.output
    assert {t: before[t] - n for t, n in counts(db_url).items()} == {t: EXPECTED.get(t, 0) for t in before}

    # The view reads exactly the same; every row left is a kept as_of's or a latest one.
    assert query(db_url, LATEST_SQL) == latest
    assert query(db_url, DRIFT_LATEST_SQL) == drift_latest
    per_day = query(db_url, "SELECT as_of, count(*), min(entity_id), max(entity_id) FROM predictions "
                            "GROUP BY as_of ORDER BY as_of")
    assert [(str(d), n, lo, hi) for d, n, lo, hi in per_day] == [
        (str(DAYS[0]), 3, 18, 20), (str(DAYS[1]), 3, 15, 17), (str(DAYS[2]), 3, 12, 14),
        (str(DAYS[3]), 11, 1, 11), (str(DAYS[4]), 8, 1, 8)]
    shadow_days = query(db_url, "SELECT DISTINCT as_of FROM predictions_shadow ORDER BY as_of")
    assert [str(d) for (d,) in shadow_days] == [str(DAYS[3]), str(DAYS[4])]
    assert query(db_url, "SELECT DISTINCT run_id FROM rejected_rows ORDER BY run_id") == [(4,), (5,), (6,)]
    assert query(db_url, "SELECT run_id FROM scoring_runs ORDER BY run_id") == [(r,) for r in (1, 2, 3, 4, 5, 6)]
    for table in ("feature_profiles", "drift", "shadow_comparisons"):
        runs = {r for (r,) in query(db_url, f"SELECT DISTINCT run_id FROM {table}")}  # noqa: S608
        assert 7 not in runs and 1 in runs, table

    again = cli_run(h.cfg, "prune")
    assert again.exit_code == 0 and "prune: deleted 0 row(s)" in again.output


def test_dry_run_counts_what_prune_deletes_and_deletes_nothing(tmp_path: Path, db_url: str) -> None:
    h = make_history(tmp_path, db_url, **RULES)
    before = counts(db_url)
    result = cli_run(h.cfg, "prune", "--dry-run")
    assert result.exit_code == 0, result.output
    assert counts(db_url) == before
    assert "would delete 100 row(s); nothing was deleted" in result.output
    table = {tuple(line.split()[:2]): line.split()[2] for line in result.output.splitlines()
             if line.startswith("j ")}
    assert {t: int(n.replace(",", "")) for (_, t), n in table.items()} == EXPECTED

    dry = api.prune(h.cfg, dry_run=True)
    real = api.prune(h.cfg)
    assert dry.deleted == real.deleted and _deleted(real) == EXPECTED


def _dry_predictions(cfg: Path, **retention: Any) -> int:
    loaded = api.as_config(cfg)
    rules = loaded.model_copy(update={"retention": RetentionConfig(**retention)})
    return api.prune(rules, dry_run=True).rows_of("predictions")


def test_an_as_of_is_kept_when_any_rule_keeps_it(tmp_path: Path, sqlite_url: str) -> None:
    h = make_history(tmp_path, sqlite_url, **RULES)
    # predictions_days 1: D3 (yesterday) and D4 (today) are kept, as with the last 2 as_ofs.
    assert _dry_predictions(h.cfg, predictions_days=1) == 42
    assert _dry_predictions(h.cfg, predictions_days=3) == 17  # D0 only: D1..D4 kept
    # Both rules: kept by either. The last 4 as_ofs keep D1; one day alone would not.
    assert _dry_predictions(h.cfg, predictions_days=1, predictions_keep_as_ofs=4) == 17
    assert _dry_predictions(h.cfg, predictions_keep_as_ofs=5) == 0  # D0..D4 are the last 5
    assert _dry_predictions(h.cfg) == 0  # no prediction rule: all kept


def test_default_retention_keeps_every_prediction_and_young_ledger_rows(tmp_path: Path, db_url: str) -> None:
    h = make_history(tmp_path, db_url)  # defaults: rejected rows 30 days, ledger 400 days
    report = api.prune(h.cfg)
    assert _deleted(report) == {"rejected_rows": 3, "scoring_runs": 1, "feature_profiles": 2,
                                "shadow_comparisons": 1}
    assert query(db_url, "SELECT count(*) FROM predictions") == [(70,)]


def test_small_batches_delete_exactly_what_one_batch_does(tmp_path: Path, db_url: str) -> None:
    h = make_history(tmp_path, db_url, **RULES)
    latest = query(db_url, LATEST_SQL)
    rules = api.maintenance.retention_rules(api.as_config(h.cfg))
    engine = create_engine(db_url)
    try:
        done = pruning.prune_job(engine, "j", rules, output="predictions", batch_rows=4, batch_runs=1)
    finally:
        engine.dispose()
    assert {p.table: p.rows for p in done} == EXPECTED
    assert query(db_url, LATEST_SQL) == latest
    assert query(db_url, "SELECT count(*) FROM predictions") == [(70 - 42,)]


def test_prune_of_named_jobs_leaves_the_others_alone(tmp_path: Path, sqlite_url: str) -> None:
    h = make_history(tmp_path, sqlite_url, **RULES)
    before = counts(sqlite_url)
    # A job the ledger does not know has nothing to prune; an unknown name is an error.
    other = cli_run(h.cfg, "prune", "j2")
    assert other.exit_code == 2 and "unknown job 'j2'" in other.output
    assert counts(sqlite_url) == before
    # A job removed from the config is still pruned by name (its ledger rows say where its rows are).
    cfg = write_config(tmp_path, sqlite_url, {}, retention=RULES)
    result = cli_run(cfg, "prune", "j")
    assert result.exit_code == 0, result.output
    assert before["predictions"] - counts(sqlite_url)["predictions"] == 42


def test_prune_without_a_ledger_has_nothing_to_delete(tmp_path: Path, sqlite_url: str) -> None:
    load_table(sqlite_url, features_frame(5))  # a database, but nothing scored yet
    cfg = write_config(tmp_path, sqlite_url, {}, retention=RULES)
    result = cli_run(cfg, "prune")
    assert result.exit_code == 0, result.output
    assert "prune: deleted 0 row(s)" in result.output


def test_prune_never_blocks_a_reader_whose_open_transaction_keeps_its_snapshot(
    tmp_path: Path, db_url: str
) -> None:
    h = make_history(tmp_path, db_url, **RULES)
    engine = create_engine(db_url)
    try:
        reader = engine.connect()
        if reader.dialect.name == "postgresql":  # a BI tool's report: one consistent snapshot
            reader = reader.execution_options(isolation_level="REPEATABLE READ")
        with reader, reader.begin():
            latest = [tuple(r) for r in reader.execute(sa.text(LATEST_SQL))]
            assert reader.execute(sa.text("SELECT count(*) FROM predictions")).scalar() == 70

            outcome: list[object] = []
            pruner = threading.Thread(target=lambda: outcome.append(_prune_or_error(h.cfg)))
            pruner.start()
            pruner.join(timeout=60)
            assert not pruner.is_alive(), "prune waited for the reader"
            [report] = outcome
            assert isinstance(report, api.PruneReport) and report.rows_of("predictions") == 42

            # Still inside its transaction the reader sees what it saw.
            assert [tuple(r) for r in reader.execute(sa.text(LATEST_SQL))] == latest
            assert reader.execute(sa.text("SELECT count(*) FROM predictions")).scalar() == 70
        assert query(db_url, LATEST_SQL) == latest
        assert query(db_url, "SELECT count(*) FROM predictions") == [(28,)]
    finally:
        engine.dispose()


def _prune_or_error(cfg: Path) -> object:
    try:
        return api.prune(cfg)
    except Exception as exc:  # noqa: BLE001 - the test shows it
        return exc
