"""What an operator running the tool by its docs relies on: a cron run without --as-of
scores the job's as_of rule in the configured time zone; a replaced model file is
named in the log; a backfill's summary counts what happened to every date; library
log lines go through the CLI's stamped, masking handler."""

from __future__ import annotations

import logging
import os
import re
from datetime import date, timedelta
from pathlib import Path

import pytest

from batch_scorer import api
from batch_scorer.cli.app import THIRD_PARTY_LOGGERS, _setup_logging
from batch_scorer.dates import today
from tests.helpers import cli_run, features_frame, job, load_table, query, save_model, train, write_config
from tests.schedule_support import dated_job

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")


def test_cron_run_without_as_of_scores_the_previous_day_in_the_configured_timezone(
    tmp_path: Path, sqlite_url: str
) -> None:
    load_table(sqlite_url, features_frame(50))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, sqlite_url, {"j": job(as_of_column=None, as_of="previous_day")},
                       timezone="Europe/Berlin")
    before = today("Europe/Berlin") - timedelta(days=1)
    result = cli_run(cfg, "run", "j", "--trigger", "cron")
    after = today("Europe/Berlin") - timedelta(days=1)
    assert result.exit_code == 0, result.output
    [(as_of, trigger, status)] = query(sqlite_url, "SELECT as_of, trigger, status FROM scoring_runs")
    assert (trigger, status) == ("cron", "succeeded")
    assert date.fromisoformat(str(as_of)) in {before, after}  # the same day unless midnight passed
    assert query(sqlite_url, "SELECT DISTINCT as_of FROM predictions") == [(as_of,)]


def _replace_atomically(path: Path, model: object) -> None:
    """Write the new model beside the old one, then rename it over (docs/operations.md)."""
    save_model(model, path.with_name(path.name + ".new"))
    os.replace(path.with_name(path.name + ".new"), path)


def test_a_replaced_model_file_is_named_in_one_log_line(tmp_path: Path, sqlite_url: str) -> None:
    load_table(sqlite_url, features_frame(50))
    model = save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, sqlite_url, {"j": job(as_of_column=None)})
    first = cli_run(cfg, "run", "j", "--as-of", "2026-03-31")
    assert first.exit_code == 0 and "model version changed" not in first.output
    same = cli_run(cfg, "run", "j", "--as-of", "2026-03-31")
    assert same.exit_code == 0 and "model version changed" not in same.output

    _replace_atomically(model, train("binary", features_frame(300, seed=9)))
    changed = cli_run(cfg, "run", "j", "--as-of", "2026-03-31")
    assert changed.exit_code == 0, changed.output
    (old,), (new,) = query(sqlite_url, "SELECT DISTINCT model_version FROM scoring_runs ORDER BY run_id")
    lines = [ln for ln in changed.output.splitlines() if "model version changed" in ln]
    assert len(lines) == 1 and " WARNING " in lines[0]
    assert lines[0].endswith(f"job j: model version changed from {old} (run 2) to {new}")


def test_a_model_file_replaced_under_the_same_version_label_is_named_too(
    tmp_path: Path, sqlite_url: str
) -> None:
    load_table(sqlite_url, features_frame(50))
    model = save_model(train("binary"), tmp_path / "models" / "m.joblib")
    labelled = job(as_of_column=None)
    labelled["model"]["version"] = "v1"
    cfg = write_config(tmp_path, sqlite_url, {"j": labelled})
    assert cli_run(cfg, "run", "j", "--as-of", "2026-03-31").exit_code == 0
    _replace_atomically(model, train("binary", features_frame(300, seed=9)))
    changed = cli_run(cfg, "run", "j", "--as-of", "2026-03-31")
    assert changed.exit_code == 0, changed.output
    assert "job j: model file changed (sha256 " in changed.output
    assert "but its version v1 did not (last published by run 1)" in changed.output


def test_backfill_fail_fast_reports_the_dates_it_never_attempted(tmp_path: Path, sqlite_url: str) -> None:
    cfg = dated_job(tmp_path, sqlite_url, days=3)  # rows for 2026-01-01..03 only
    result = cli_run(cfg, "backfill", "j", "--start", "2026-01-01", "--end", "2026-01-14", "--fail-fast")
    assert result.exit_code == 1, result.output
    assert ("backfill j: 14 date(s): 3 succeeded, 0 skipped (already succeeded), 1 failed, "
            "0 skipped (another run held the lock), 10 not attempted") in result.output
    # The failure is printed once, naming its date.
    assert result.output.count("the source returned no rows for as_of 2026-01-04") == 1
    assert "Error: as_of 2026-01-04: " in result.output
    assert query(sqlite_url, "SELECT count(*) FROM scoring_runs") == [(4,)]

    again = api.backfill(cfg, "j", "2026-01-01", "2026-01-14", fail_fast=True)
    assert again.counts() == {"succeeded": 0, "already_done": 3, "failed": 1, "locked": 0, "not_attempted": 10}
    assert again.not_attempted == [("j", date(2026, 1, d)) for d in range(5, 15)]


def test_library_log_lines_are_stamped_masked_and_psycopg_noise_shows_only_with_vv(
    capsys: pytest.CaptureFixture[str],
) -> None:
    saved = {n: (lg.handlers[:], lg.level, lg.propagate)
             for n in THIRD_PARTY_LOGGERS for lg in [logging.getLogger(n)]}
    try:
        for verbose in (0, 2):
            _setup_logging(verbose, quiet=False)
            logging.getLogger("psycopg").warning("error ignored terminating %r: %s", "<psycopg.Copy [BAD]>",
                                                 "the connection is lost")
            logging.getLogger("sqlalchemy.pool").warning("connection to postgresql://u:secret@db/x failed")
            logging.getLogger("sqlalchemy.engine").info("SELECT 1")  # below WARNING: not shown
            lines = capsys.readouterr().err.splitlines()
            assert all(STAMP.match(ln) for ln in lines), lines
            assert any("WARNING sqlalchemy.pool: connection to postgresql://u:***@db/x failed" in ln for ln in lines)
            assert "secret" not in "".join(lines) and "SELECT 1" not in "".join(lines)
            assert any("error ignored terminating" in ln for ln in lines) == (verbose == 2)
            assert len(lines) == (2 if verbose == 2 else 1)
    finally:
        for name, (handlers, level, propagate) in saved.items():
            lg = logging.getLogger(name)
            lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate
