"""The BI views on PostgreSQL read through psqlODBC, the driver Excel and Power BI's
ODBC connector use, give what SQLAlchemy reads: dates as dates, ``scored_at`` as
the UTC instant once the session's TimeZone is UTC (docs/power-bi.md), scores
as floats, counts as whole numbers, a BIGINT key beyond 2^53 exact."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from batch_scorer.storage.schema import scoring_runs
from tests.helpers import AS_OF, OTHER_AS_OF, cli_run, features_frame, job, load_table, query, save_model, train
from tests.helpers import write_config as config_file
from tests.test_odbc_drivers import PG_DRIVER, column_types, odbc_read, pg_odbc, require_driver

ROWS = 60
BIG_KEY = 2**62 + 1  # a double cannot hold it: 2**62 + 1 == 2**62 as float


@dataclass(frozen=True)
class Scored:
    """A schema with real runs: a classifier over two as_ofs, a regressor over one."""

    url: str
    odbc: str


@pytest.fixture
def scored(pg_url: str, tmp_path: Path) -> Scored:
    require_driver(PG_DRIVER)
    for as_of in (OTHER_AS_OF, AS_OF):
        frame = features_frame(ROWS, seed=as_of.month, as_of=as_of)
        frame.loc[0, "entity_id"] = BIG_KEY
        load_table(pg_url, frame)
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    save_model(train("regressor"), tmp_path / "models" / "r.joblib")
    cfg = config_file(tmp_path, pg_url, {
        "j": job(pass_through=["region"]),
        "r": job(model="models/r.joblib", output="amounts"),
    })
    for name, as_of in (("j", OTHER_AS_OF), ("j", AS_OF), ("r", AS_OF)):
        result = cli_run(cfg, "run", name, "--as-of", as_of.isoformat())
        assert result.exit_code == 0, result.output
    return Scored(pg_url, pg_odbc(pg_url))


def _same(odbc_rows: list[tuple[Any, ...]], sa_rows: list[tuple[Any, ...]]) -> None:
    """Equal values, reading ODBC's naive timestamps as UTC (the session is UTC)."""
    def utc(v: Any) -> Any:
        return v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v
    assert [tuple(utc(v) for v in r) for r in odbc_rows] == sa_rows


def test_psqlodbc_reads_predictions_latest_as_sqlalchemy_does(scored: Scored) -> None:
    sql = "SELECT * FROM predictions_latest ORDER BY job, entity_id"
    names, rows = odbc_read(scored.odbc, sql)
    sa_rows = query(scored.url, sql)
    assert len(rows) == ROWS and {r[names.index("as_of")] for r in rows} == {AS_OF}
    _same(rows, sa_rows)
    types = column_types(rows, names)
    assert types["as_of"] == {date} and types["scored_at"] == {datetime}
    assert types["score"] == {float} and types["entity_id"] == {int} and types["prediction"] == {int}
    assert types["job"] == {str} and types["region"] == {str}
    assert BIG_KEY in [r[names.index("entity_id")] for r in rows]
    assert [r[names.index("scored_at")] for r in rows] == [r[5].replace(tzinfo=None) for r in sa_rows]


def test_psqlodbc_reads_classifier_and_regressor_daily_views_with_whole_counts_and_float_means(
    scored: Scored,
) -> None:
    sql = "SELECT * FROM predictions_daily ORDER BY as_of, prediction"
    names, rows = odbc_read(scored.odbc, sql)
    assert names == ["job", "as_of", "model_version", "prediction", "rows", "share", "day_rows", "mean_score"]
    _same(rows, query(scored.url, sql))
    types = column_types(rows, names)
    assert types["rows"] == types["day_rows"] == {int}  # not Decimal: sum(bigint) is cast back to BIGINT
    assert types["share"] == types["mean_score"] == {float} and types["as_of"] == {date}
    assert {(r[1], r[6]) for r in rows} == {(OTHER_AS_OF, ROWS), (AS_OF, ROWS)}
    assert sum(r[5] for r in rows) == pytest.approx(2.0)

    sql = "SELECT * FROM amounts_daily"
    names, rows = odbc_read(scored.odbc, sql)
    assert names == ["job", "as_of", "model_version", "rows", "mean_prediction", "min_prediction",
                     "max_prediction", "mean_score"]
    _same(rows, query(scored.url, sql))
    [(_, as_of, _, count, mean, low, high, _)] = rows
    assert as_of == AS_OF and count == ROWS and all(isinstance(v, float) for v in (mean, low, high))


def test_psqlodbc_reads_scoring_runs_bi_without_host_pid_or_error(scored: Scored) -> None:
    sql = "SELECT * FROM scoring_runs_bi ORDER BY run_id"
    names, rows = odbc_read(scored.odbc, sql)
    assert names == [c.name for c in scoring_runs.c if c.name not in ("host", "pid", "error")]
    _same(rows, query(scored.url, sql))
    assert [r[names.index("status")] for r in rows] == ["succeeded"] * 3
    types = column_types(rows, names)
    assert types["started_at"] == types["finished_at"] == {datetime}
    assert types["run_id"] == types["rows_scored"] == {int} and types["as_of"] == {date}


def test_psqlodbc_gives_timestamptz_in_the_session_time_zone_so_bi_sets_it_to_utc(scored: Scored) -> None:
    sql = "SELECT scored_at FROM predictions_latest WHERE entity_id = 2"
    [(aware,)] = query(scored.url, sql)
    [(as_utc,)] = odbc_read(pg_odbc(scored.url, timezone="UTC"), sql)[1]
    [(as_new_york,)] = odbc_read(pg_odbc(scored.url, timezone="America/New_York"), sql)[1]
    # Naive in both: ODBC's TIMESTAMP has no zone. Only the UTC session gives the UTC instant.
    assert as_utc.tzinfo is None and as_utc == aware.astimezone(UTC).replace(tzinfo=None)
    assert as_new_york == aware.astimezone(ZoneInfo("America/New_York")).replace(tzinfo=None)
    assert as_new_york != as_utc
