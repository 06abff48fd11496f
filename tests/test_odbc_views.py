"""What the views answer as a BI tool asks, read through the real ODBC drivers:
``_daily`` filtered to one job and day reads only that day (the query a
DirectQuery visual sends), and ``drift_latest`` shows the drift of the latest
as_of whose run is still published, whatever ran since."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from batch_scorer.monitoring.drift import OK
from batch_scorer.storage.db import create_engine
from batch_scorer.storage.schema import drift
from tests.helpers import AS_OF, OTHER_AS_OF, cli_run, features_frame, job, load_table, save_model, train
from tests.helpers import write_config as config_file
from tests.test_odbc_drivers import PG_DRIVER, SQLITE_DRIVER, odbc_read, pg_odbc, require_driver, sqlite_odbc

ROWS = 30


def _scored(url: str, folder: Path) -> Path:
    for as_of in (OTHER_AS_OF, AS_OF):
        load_table(url, features_frame(ROWS, seed=as_of.month, as_of=as_of))
    save_model(train("binary"), folder / "models" / "m.joblib")
    cfg = config_file(folder, url, {"j": job()})
    for as_of in (OTHER_AS_OF, AS_OF):
        _ok(cfg, "run", "j", "--as-of", as_of.isoformat())
    return cfg


def _ok(cfg: Path, *args: str) -> None:
    result = cli_run(cfg, *args)
    assert result.exit_code == 0, result.output


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def test_daily_view_filtered_to_one_job_and_day_reads_only_that_day(pg_url: str, tmp_path: Path) -> None:
    require_driver(PG_DRIVER)
    _scored(pg_url, tmp_path)
    # As Power BI's DirectQuery sends it: the view wrapped, the filter outside.
    visual = ('SELECT * FROM (SELECT * FROM predictions_daily) AS "$Table" '
              f"WHERE \"job\" = 'j' AND \"as_of\" = DATE '{AS_OF.isoformat()}'")
    odbc = pg_odbc(pg_url)
    [(plan,)] = odbc_read(odbc, f"EXPLAIN (FORMAT JSON) {visual}")[1]
    scans = [n for n in _nodes(json.loads(plan)[0]["Plan"]) if n.get("Relation Name") == "predictions"]
    assert len(scans) == 1
    condition = scans[0].get("Index Cond", "") + scans[0].get("Filter", "")
    # The day's filter is applied where the rows are read, before any grouping.
    assert "as_of" in condition and "job" in condition, scans[0]
    [(day_rows,)] = {(r[6],) for r in odbc_read(odbc, visual)[1]}
    assert day_rows == ROWS


def _add_drift(url: str, run_id: int, as_of: date) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(drift), [
                {"run_id": run_id, "job": "j", "as_of": as_of, "model_version": "v", "feature": f,
                 "psi_reference": 0.01, "status": OK} for f in ("x1", "x2")
            ])
    finally:
        engine.dispose()


def _drift_latest(url: str) -> set[tuple[Any, ...]]:
    if url.startswith("sqlite"):
        require_driver(SQLITE_DRIVER)
        rows = odbc_read(sqlite_odbc(url), "SELECT run_id, as_of FROM drift_latest", SQLITE_DRIVER)[1]
        return {(run_id, date.fromisoformat(str(as_of))) for run_id, as_of in rows}
    return set(odbc_read(pg_odbc(url), "SELECT run_id, as_of FROM drift_latest")[1])


def test_drift_latest_is_the_latest_as_of_of_a_published_run(db_url: str, tmp_path: Path) -> None:
    cfg = _scored(db_url, tmp_path)  # run 1: OTHER_AS_OF, run 2: AS_OF
    _add_drift(db_url, 1, OTHER_AS_OF)
    _add_drift(db_url, 2, AS_OF)
    assert _drift_latest(db_url) == {(2, AS_OF)}

    _ok(cfg, "run", "j", "--as-of", OTHER_AS_OF.isoformat())  # run 3: a later backfill of the older day
    _add_drift(db_url, 3, OTHER_AS_OF)
    assert _drift_latest(db_url) == {(2, AS_OF)}  # still the latest day, not the latest run

    _ok(cfg, "retract", "2")
    assert _drift_latest(db_url) == {(3, OTHER_AS_OF)}  # not run 1: run 3 replaced it


def test_daily_view_shares_add_up_per_day_on_sqlite_through_odbc(sqlite_url: str, tmp_path: Path) -> None:
    require_driver(SQLITE_DRIVER)
    _scored(sqlite_url, tmp_path)
    sql = f"SELECT rows, share, day_rows FROM predictions_daily WHERE as_of = '{AS_OF.isoformat()}'"
    rows = odbc_read(sqlite_odbc(sqlite_url), sql, SQLITE_DRIVER)[1]
    assert sum(r[0] for r in rows) == ROWS and {r[2] for r in rows} == {ROWS}
    assert sum(r[1] for r in rows) == pytest.approx(1.0)
