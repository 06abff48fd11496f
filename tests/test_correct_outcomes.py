"""What a run tells: results and exit codes that match the ledger, the ledger says why a
run did not happen, nothing scored is never a success, and the API says so too."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from batch_scorer import api
from batch_scorer.config import load_config
from batch_scorer.errors import RunFailed, UsageError
from tests.helpers import (
    AS_OF,
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


def _project(tmp_path: Path, url: str, rows: int = 60, kind: str = "binary", **job_kw: object) -> Path:
    load_table(url, features_frame(rows, seed=3))
    save_model(train(kind), tmp_path / "models" / "m.joblib")
    return write_config(tmp_path, url, {"j": job(**job_kw)})


def test_a_run_whose_every_row_is_rejected_is_not_a_success_and_keeps_the_published_set(
    tmp_path: Path, db_url: str
) -> None:
    cfg = _project(tmp_path, db_url, max_rejected_fraction=1)
    assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    before = published(db_url)
    from batch_scorer.storage.db import create_engine

    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE features SET entity_id = NULL")  # every row rejected: NULL key
    engine.dispose()
    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 1, result.output
    assert "none could be scored" in result.output and "allow_empty" in result.output
    assert len(published(db_url)) == len(before)  # the earlier set is still what readers see
    assert query(db_url, "SELECT status, rows_read, rows_scored, rows_rejected FROM scoring_runs "
                         "ORDER BY run_id DESC LIMIT 1") == [("failed", 60, 0, 60)]


def test_a_failed_result_keeps_its_numbers_and_check_raises_with_the_exit_code(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _project(tmp_path, sqlite_url, rows=100)
    from batch_scorer.storage.db import create_engine

    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE features SET x2 = 'oops' WHERE entity_id <= 10")  # 10% bad rows
    engine.dispose()
    [result] = api.run(cfg, ["j"], as_of=AS_OF)
    assert result.status == "failed" and result.exit_code == 1
    [(read, rejected, version)] = query(sqlite_url, "SELECT rows_read, rows_rejected, model_version FROM scoring_runs")
    assert (result.rows_read, result.rows_rejected, result.model_version) == (read, rejected, version) == (
        100, 10, version)
    with pytest.raises(RunFailed) as caught:
        api.run(cfg, ["j"], as_of=AS_OF, check=True)
    assert caught.value.exit_code == 1 and "max_rejected_fraction" in str(caught.value)
    assert [r.status for r in caught.value.results] == ["failed"]
    with pytest.raises(api.RunFailed):  # importable where a notebook user looks for it
        api.run(cfg, ["j"], as_of=AS_OF).raise_for_failures()


def test_api_misuse_is_a_usage_error_in_api_terms(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _project(tmp_path, sqlite_url)
    with pytest.raises(UsageError, match="list"):
        api.run(cfg, "j", as_of=AS_OF)  # a bare string is not read as the jobs j
    with pytest.raises(UsageError, match="trigger 'notebook'"):
        api.run(cfg, ["j"], as_of=AS_OF, trigger="notebook")
    with pytest.raises(UsageError) as none:
        api.run(cfg, [], as_of=AS_OF)
    assert "all_jobs=True" in str(none.value)
    as_dict = load_config(str(cfg)).model_dump(exclude={"base_dir", "source_file"})
    assert api.as_config({"database": as_dict["database"], "jobs": {}}).jobs == {}


def test_runs_that_could_not_start_are_in_the_ledger_with_why(tmp_path: Path, db_url: str) -> None:
    cfg = _project(tmp_path, db_url)
    assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    (tmp_path / "models" / "m.joblib").unlink()  # last night's deploy lost the model file
    missing = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    assert missing.exit_code == 2
    [(status, error)] = query(db_url, "SELECT status, error FROM scoring_runs WHERE status != 'succeeded'")
    assert status == "invalid" and "not found" in error
    listing = cli_run(cfg, "runs", "--status", "invalid", "--json")
    assert listing.exit_code == 0
    [record] = [json.loads(line) for line in listing.output.splitlines() if line.startswith("{")]
    assert record["status"] == "invalid" and record["rows_published"] == 0 and "not found" in record["error"]


def test_runs_shows_read_scored_and_published_and_filters(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _project(tmp_path, sqlite_url)
    for _ in range(2):
        assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    table = cli_run(cfg, "runs").output.splitlines()
    assert table[0].split()[6:9] == ["read", "scored", "published"]
    newest, older = table[1].split(), table[2].split()
    assert newest[6:9] == ["60", "60", "60"]
    assert older[6:9] == ["60", "60", "0"]  # replaced by the newer run: nothing of it is visible
    assert len(cli_run(cfg, "runs", "--since", "2000-01-01").output.splitlines()) == 3
    assert cli_run(cfg, "runs", "--since", "2999-01-01").output.strip() == "no runs match these filters"
    assert cli_run(cfg, "runs", "--status", "failed").output.strip() == "no runs match these filters"
    assert len(cli_run(cfg, "runs", "--status", "Succeeded").output.splitlines()) == 3  # any case
    typo = cli_run(cfg, "runs", "--job", "jj")
    assert typo.exit_code == 2 and "unknown job 'jj'" in typo.output
    bogus = cli_run(cfg, "runs", "--status", "bogus")
    assert bogus.exit_code == 2 and "'bogus' is not a run status" in bogus.output and "retracted" in bogus.output


def test_validate_and_runs_never_create_a_sqlite_file_from_a_typo(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'typo_dir' / 'demo.bd'}"
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, url, {"j": job()})
    for command in (["validate"], ["runs"]):
        result = cli_run(cfg, *command)
        assert result.exit_code == 2, result.output
        assert "does not exist" in result.output and "demo.bd" in result.output
    assert not (tmp_path / "typo_dir").exists()


def test_a_table_that_blocks_a_view_name_is_refused_before_anything_is_recorded(tmp_path: Path, db_url: str) -> None:
    cfg = _project(tmp_path, db_url)
    from batch_scorer.storage.db import create_engine

    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE predictions_latest (x integer)")
    engine.dispose()
    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 2, result.output
    assert "predictions_latest" in result.output and "Traceback" not in result.output
    assert published(db_url).empty


def test_a_model_whose_predictions_do_not_fit_the_output_table_is_refused_by_validate_and_run(
    tmp_path: Path, db_url: str
) -> None:
    cfg = _project(tmp_path, db_url, kind="binary")  # classes 0/1: an integer prediction column
    assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    save_model(train("multiclass"), tmp_path / "models" / "m.joblib")  # text classes now
    checked = cli_run(cfg, "validate", "j")
    assert checked.exit_code == 2, checked.output
    assert "integer prediction column" in checked.output and "text values" in checked.output
    run = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    assert run.exit_code == 2, run.output
    # Exit 2: nothing scored; the attempt is recorded as invalid, no run was started.
    assert query(db_url, "SELECT status FROM scoring_runs ORDER BY run_id") == [("succeeded",), ("invalid",)]


def test_each_failure_is_printed_once(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _project(tmp_path, sqlite_url)
    (tmp_path / "models" / "m.joblib").write_bytes(b"")
    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 2
    assert result.output.count("is empty") == 1, result.output
    assert "job 'j': job 'j'" not in result.output


def test_no_scoring_threads_stay_alive_after_a_run_in_a_notebook(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _project(tmp_path, sqlite_url, rows=9_000)
    api.run(cfg, ["j"], as_of=AS_OF, check=True)
    assert not [t for t in threading.enumerate() if t.name.startswith(("bs-score", "bs-job", "bs-reader"))]


def test_check_true_raises_with_every_jobs_result_the_succeeded_ones_too(tmp_path: Path, sqlite_url: str) -> None:
    """A notebook calling ``api.run(cfg, [a, b], check=True)`` where one job fails still learns
    the other's run id and rows from the exception."""
    load_table(sqlite_url, features_frame(100, seed=3))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, sqlite_url, {"strict": job(output="strict_out"),
                                              "lenient": job(output="lenient_out", max_rejected_fraction=1)})
    from batch_scorer.storage.db import create_engine

    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE features SET x2 = 'oops' WHERE entity_id <= 10")
    engine.dispose()
    with pytest.raises(api.RunFailed) as caught:
        api.run(cfg, ["strict", "lenient"], as_of=AS_OF, check=True)
    by_job = {r.job: r for r in caught.value.results}
    assert by_job["strict"].status == "failed" and caught.value.exit_code == 1
    assert by_job["lenient"].status == "succeeded" and by_job["lenient"].rows_scored == 90
    assert query(sqlite_url, "SELECT count(*) FROM lenient_out") == [(90,)]
