"""Every failure a user can cause: exit 2, one clear message naming the job and
the thing to fix, nothing written. An unreachable database: exit 1, host named,
password masked. Never a bare traceback."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression

from tests.helpers import (
    AS_OF,
    cli_run,
    features_frame,
    job,
    load_table,
    query,
    save_model,
    train,
    write_config,
)


def _nothing_written(url: str) -> None:
    names = {n for (n,) in query(url, "SELECT name FROM sqlite_master")}
    assert not names & {"scoring_runs", "predictions", "job_locks", "rejected_rows"}, names


def _project(tmp_path: Path, url: str, **job_kw: object) -> Path:
    load_table(url, features_frame(30))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    return write_config(tmp_path, url, {"churn": job(**job_kw)})  # type: ignore[arg-type]


def _assert_clean_error(result: object, *needles: str) -> None:
    out = result.output  # type: ignore[attr-defined]
    assert "Traceback" not in out
    assert "Error: " in out
    for needle in needles:
        assert needle in out, out


def test_unknown_config_key_exits_2_with_did_you_mean(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _project(tmp_path, sqlite_url)
    cfg.write_text(cfg.read_text().replace("pass_through:", "pass_thru:"))
    result = cli_run(cfg, "run", "churn")
    assert result.exit_code == 2
    _assert_clean_error(result, "unknown key jobs.churn.output.pass_thru", "did you mean 'pass_through'")
    _nothing_written(sqlite_url)


def test_missing_environment_variable_exits_2_naming_it(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "${NO_SUCH_DB_URL_VAR}", {})
    result = cli_run(cfg, "run", "--all")
    assert result.exit_code == 2
    _assert_clean_error(result, "NO_SUCH_DB_URL_VAR", "database.url")


def test_env_default_expands(tmp_path: Path, sqlite_url: str) -> None:
    _project(tmp_path, sqlite_url)
    cfg = write_config(tmp_path, "${NO_SUCH_DB_URL_VAR:-" + sqlite_url + "}", {"churn": job()})
    assert cli_run(cfg, "run", "churn", "--as-of", AS_OF.isoformat()).exit_code == 0
    assert query(sqlite_url, "SELECT count(*) FROM predictions") == [(30,)]


def test_missing_model_file_exits_2(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _project(tmp_path, sqlite_url, model="models/nope.joblib")
    result = cli_run(cfg, "run", "churn")
    assert result.exit_code == 2
    _assert_clean_error(result, "job 'churn'", "nope.joblib", "not found")
    _nothing_written(sqlite_url)


def test_model_without_feature_names_needs_a_features_list(tmp_path: Path, sqlite_url: str) -> None:
    load_table(sqlite_url, features_frame(30))
    rng = np.random.default_rng(0)
    model = LogisticRegression().fit(rng.normal(size=(40, 2)), rng.integers(0, 2, 40))
    joblib.dump(model, tmp_path / "m.joblib")
    cfg = write_config(tmp_path, sqlite_url, {"churn": job(model="m.joblib")})
    result = cli_run(cfg, "run", "churn")
    assert result.exit_code == 2
    _assert_clean_error(result, "job 'churn'", "features:")
    _nothing_written(sqlite_url)
    # With the list, it scores by those columns.
    cfg = write_config(tmp_path, sqlite_url, {"churn": job(model="m.joblib", features=["x2", "x3"])})
    assert cli_run(cfg, "run", "churn", "--as-of", AS_OF.isoformat()).exit_code == 0


def test_source_missing_a_model_column_exits_2_before_reading(tmp_path: Path, sqlite_url: str) -> None:
    load_table(sqlite_url, features_frame(30).drop(columns=["x3"]))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, sqlite_url, {"churn": job()})
    result = cli_run(cfg, "run", "churn")
    assert result.exit_code == 2
    _assert_clean_error(result, "job 'churn'", "model feature column(s) ['x3']")
    _nothing_written(sqlite_url)


def test_missing_source_table_exits_2(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _project(tmp_path, sqlite_url, table="no_such_table")
    result = cli_run(cfg, "run", "churn")
    assert result.exit_code == 2
    _assert_clean_error(result, "job 'churn'", "no_such_table", "does not exist")


def test_unknown_job_exits_2_listing_the_jobs(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _project(tmp_path, sqlite_url)
    result = cli_run(cfg, "run", "chrun")
    assert result.exit_code == 2
    _assert_clean_error(result, "unknown job 'chrun'", "did you mean 'churn'", "churn")
    _nothing_written(sqlite_url)


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = cli_run(tmp_path / "absent.yaml", "run", "--all")
    assert result.exit_code == 2
    _assert_clean_error(result, "absent.yaml", "not found")


def test_config_found_through_environment_variable(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _project(tmp_path, sqlite_url)
    result = cli_run(None, "run", "churn", "--as-of", AS_OF.isoformat(),
                     env={"BATCH_SCORER_CONFIG": str(cfg)})
    assert result.exit_code == 0, result.output


def test_bad_date_exits_2(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _project(tmp_path, sqlite_url)
    result = cli_run(cfg, "run", "churn", "--as-of", "2026-02-30")
    assert result.exit_code == 2
    assert "YYYY-MM-DD" in result.output


def test_unreachable_database_exits_1_naming_host_and_masking_password(tmp_path: Path) -> None:
    secret = "S3ntinel-pw-4711"
    cfg = write_config(tmp_path, f"postgresql://scorer:{secret}@127.0.0.1:1/analytics", {})
    result = cli_run(cfg, "validate")
    assert result.exit_code == 1
    _assert_clean_error(result, "127.0.0.1", "cannot connect")
    assert secret not in result.output


def test_validate_reports_problems_and_writes_nothing(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _project(tmp_path, sqlite_url)
    ok = cli_run(cfg, "validate")
    assert ok.exit_code == 0, ok.output
    assert "churn: ok" in ok.output
    _nothing_written(sqlite_url)
    cfg.write_text(cfg.read_text().replace("models/m.joblib", "models/gone.joblib"))
    bad = cli_run(cfg, "validate", "churn")
    assert bad.exit_code == 2
    _assert_clean_error(bad, "gone.joblib")
    _nothing_written(sqlite_url)


def test_init_db_is_idempotent_and_creates_the_view(tmp_path: Path, db_url: str) -> None:
    cfg = _project(tmp_path, db_url)
    for _ in range(2):
        result = cli_run(cfg, "init-db")
        assert result.exit_code == 0, result.output
    assert query(db_url, "SELECT count(*) FROM scoring_runs") == [(0,)]
    assert query(db_url, "SELECT count(*) FROM predictions_latest") == [(0,)]


def test_runs_lists_the_ledger(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _project(tmp_path, sqlite_url)
    assert cli_run(cfg, "runs").output.strip() == "no runs recorded yet"
    assert cli_run(cfg, "run", "churn", "--as-of", AS_OF.isoformat()).exit_code == 0
    listing = cli_run(cfg, "runs", "--job", "churn")
    assert listing.exit_code == 0
    header, row = listing.output.strip().splitlines()[:2]
    assert header.split()[:6] == ["run_id", "job", "as_of", "model", "trigger", "status"]
    assert row.split()[:6][1:3] == ["churn", AS_OF.isoformat()] and "succeeded" in row
