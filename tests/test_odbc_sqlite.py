"""The SQLite file read through the SQLite ODBC driver (how Power BI and Excel reach
SQLite): ``_latest`` gives the rows SQLAlchemy reads, dates as dates, timestamps
as UTC, keys exact; and in WAL mode a BI reader holding a snapshot open never
blocks the nightly run's publish."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import AS_OF, OTHER_AS_OF, cli_run, features_frame, job, load_table, query, save_model, train
from tests.helpers import write_config as config_file
from tests.test_odbc_drivers import SQLITE_DRIVER, column_types, odbc_read, require_driver, sqlite_odbc

ROWS = 40
BIG_KEY = 2**62 + 1
LATEST = "SELECT * FROM predictions_latest ORDER BY job, entity_id"


@pytest.fixture
def scored(sqlite_url: str, tmp_path: Path) -> Path:
    require_driver(SQLITE_DRIVER)
    for as_of in (OTHER_AS_OF, AS_OF):
        frame = features_frame(ROWS, seed=as_of.month, as_of=as_of)
        frame.loc[0, "entity_id"] = BIG_KEY
        load_table(sqlite_url, frame)
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = config_file(tmp_path, sqlite_url, {"j": job(pass_through=["region"])})
    for as_of in (OTHER_AS_OF, AS_OF):
        result = cli_run(cfg, "run", "j", "--as-of", as_of.isoformat())
        assert result.exit_code == 0, result.output
    return cfg


def _as_sqlite_stores(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """An ODBC row as SQLite's own text: dates ISO, timestamps ISO with +00:00 (UTC)."""
    def text(v: Any) -> Any:
        if isinstance(v, datetime):
            return v.replace(tzinfo=UTC).isoformat(sep=" ", timespec="microseconds")
        return v.isoformat() if isinstance(v, date) else v
    return tuple(text(v) for v in row)


def test_sqlite_odbc_reads_predictions_latest_as_sqlalchemy_does(sqlite_url: str, scored: Path) -> None:
    names, rows = odbc_read(sqlite_odbc(sqlite_url), LATEST, SQLITE_DRIVER)
    sa_rows = query(sqlite_url, LATEST)
    assert len(rows) == ROWS and {r[names.index("as_of")] for r in rows} == {AS_OF}
    score = names.index("score")
    for odbc_row, sa_row in zip(rows, sa_rows, strict=True):
        odbc_text = _as_sqlite_stores(odbc_row)
        # The driver passes REAL as 15 significant digits: scores compare approximately.
        assert odbc_text[:score] + odbc_text[score + 1:] == sa_row[:score] + sa_row[score + 1:]
        assert odbc_row[score] == pytest.approx(sa_row[score], rel=1e-14)
    types = column_types(rows, names)
    assert types["as_of"] == {date} and types["scored_at"] == {datetime} and types["score"] == {float}
    assert types["entity_id"] == {int} and BIG_KEY in [r[names.index("entity_id")] for r in rows]


def test_sqlite_timestamps_read_as_text_through_odbc_parse_as_utc(sqlite_url: str, scored: Path) -> None:
    sql = "SELECT CAST(scored_at AS TEXT), scored_at FROM predictions_latest"
    _, rows = odbc_read(sqlite_odbc(sqlite_url), sql, SQLITE_DRIVER)
    for text, parsed in rows:
        instant = datetime.fromisoformat(text)
        assert instant.utcoffset() is not None and instant.utcoffset().total_seconds() == 0
        assert parsed == instant.replace(tzinfo=None)  # the driver's datetime is that UTC time


def test_odbc_reader_holding_a_snapshot_does_not_block_the_nightly_publish(
    sqlite_url: str, scored: Path
) -> None:
    pyodbc = require_driver(SQLITE_DRIVER)
    reader = pyodbc.connect(sqlite_odbc(sqlite_url))  # autocommit off: its reads share one snapshot
    try:
        runs = "SELECT DISTINCT run_id FROM predictions_latest"
        assert reader.cursor().execute(runs).fetchall()[0][0] == 2
        rerun = cli_run(scored, "run", "j", "--as-of", AS_OF.isoformat())
        assert rerun.exit_code == 0, rerun.output  # WAL: the writer never waits for readers
        assert [tuple(r) for r in reader.cursor().execute(runs).fetchall()] == [(2,)]
        reader.commit()  # the next refresh
        assert [tuple(r) for r in reader.cursor().execute(runs).fetchall()] == [(3,)]
    finally:
        reader.close()
    assert query(sqlite_url, "PRAGMA journal_mode") == [("wal",)]
