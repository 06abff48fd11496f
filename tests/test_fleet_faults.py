"""Many jobs in one process keep every guarantee of one: each job is whole or absent, a
failing job spoils no other, at most --parallel run at once, after: orders them."""

from __future__ import annotations

import signal
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from tests.faults_support import Run
from tests.fleet_support import as_of_arg, country_frame, matrix_job, per_country_models
from tests.helpers import (
    AS_OF,
    FEATURES,
    cli_run,
    features_frame,
    load_table,
    preprocessor,
    query,
    save_model,
    write_config,
)

TWENTY = [f"C{i:02d}" for i in range(20)]


def _twenty(tmp_path: Path, url: str, rows: int, **extra: object) -> Path:
    load_table(url, country_frame(rows, TWENTY))
    per_country_models(tmp_path, TWENTY)
    return write_config(tmp_path, url, {"m": matrix_job(TWENTY, **extra)})


def _rows_per_job(url: str) -> dict[str, tuple[int, int]]:
    rows = query(url, "SELECT job, count(*), count(DISTINCT entity_id) FROM predictions GROUP BY job")
    return {job: (n, distinct) for job, n, distinct in rows}


def test_a_killed_twenty_job_run_leaves_each_job_whole_or_absent_and_a_rerun_completes_it(
    tmp_path: Path, db_url: str
) -> None:
    rows = 1_500
    cfg = _twenty(tmp_path, db_url, rows, chunk_size=100)
    run = Run(cfg, "run", "m", *as_of_arg(), "--parallel", "2")
    deadline = time.monotonic() + 90
    while not (_has_ledger(db_url) and query(db_url, "SELECT 1 FROM scoring_runs WHERE status = 'succeeded'")):
        assert time.monotonic() < deadline and run.proc.poll() is None, run.stderr
        time.sleep(0.05)
    run.wait_for_rows()
    running: list[tuple[int]] = []
    while not running:  # kill while a job is mid-way: stopped, its ledger row says running
        assert time.monotonic() < deadline and run.proc.poll() is None, run.stderr
        run.proc.send_signal(signal.SIGSTOP)  # nothing commits while the ledger is read
        running = query(db_url, "SELECT run_id FROM scoring_runs WHERE status = 'running'")
        if not running:
            run.proc.send_signal(signal.SIGCONT)
            time.sleep(0.02)
    run.proc.send_signal(signal.SIGKILL)
    assert run.finish(timeout=10) == -signal.SIGKILL

    published = _rows_per_job(db_url)
    assert 0 < len(published) < 20, "the kill did not land part-way"
    assert all(counts == (rows, rows) for counts in published.values()), published  # whole or absent

    again = cli_run(cfg, "run", "m", *as_of_arg())
    assert again.exit_code == 0, again.output
    assert _rows_per_job(db_url) == {f"m.{c}": (rows, rows) for c in TWENTY}  # complete, no duplicate
    statuses = dict(query(db_url, "SELECT status, count(*) FROM scoring_runs GROUP BY status"))
    assert statuses["abandoned"] >= 1 and "running" not in statuses
    ended = dict(query(db_url, "SELECT run_id, status FROM scoring_runs"))
    assert {ended[r] for (r,) in running} == {"abandoned"}, (running, ended)  # found stale by the rerun


def _has_ledger(url: str) -> bool:
    from batch_scorer.storage.db import create_engine

    engine = create_engine(url)
    try:
        return sa.inspect(engine).has_table("scoring_runs")
    finally:
        engine.dispose()


def test_a_job_that_fails_among_twenty_leaves_the_other_nineteen_published(tmp_path: Path, db_url: str) -> None:
    cfg = _twenty(tmp_path, db_url, 50)
    # C07's model refuses every row it sees (a category it never learned): its run fails.
    seen = features_frame(300, seed=1)
    seen = seen[seen["color"] == "red"]
    strict = Pipeline([("prep", preprocessor(handle_unknown="error")), ("m", LogisticRegression())])
    save_model(strict.fit(seen[FEATURES], (seen["x2"] > 0).astype(int)), tmp_path / "models" / "m_C07.joblib")
    from batch_scorer.storage.db import create_engine

    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE features SET color = 'purple' WHERE country = 'C07'"))
    engine.dispose()

    result = cli_run(cfg, "run", "m", *as_of_arg())
    assert result.exit_code == 1, result.output
    assert "m.C07" in result.output and "failed" in result.output
    assert set(_rows_per_job(db_url)) == {f"m.{c}" for c in TWENTY if c != "C07"}
    assert query(db_url, "SELECT status FROM scoring_runs WHERE job = 'm.C07'") == [("failed",)]


def test_parallel_three_never_has_more_than_three_jobs_running(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _twenty(tmp_path, sqlite_url, 400, chunk_size=100)
    result = cli_run(cfg, "run", "m", *as_of_arg(), "--parallel", "3")
    assert result.exit_code == 0, result.output
    spans = [(_t(a), _t(b)) for a, b in query(sqlite_url, "SELECT started_at, finished_at FROM scoring_runs")]
    assert len(spans) == 20
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 3
    assert peak >= 2, "the jobs never ran in parallel"


def _t(value: object) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def test_after_runs_a_job_once_its_upstream_jobs_are_published(tmp_path: Path, sqlite_url: str) -> None:
    load_table(sqlite_url, country_frame(60))
    per_country_models(tmp_path)
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "down.sql").write_text(
        "SELECT p.entity_id, f.x1, f.x2, f.x3, f.color FROM predictions p "
        "JOIN features f ON f.entity_id = p.entity_id WHERE p.as_of = :as_of")
    jobs = {
        "down": {"model": {"path": "models/m_AT.joblib"}, "source": {"query": "sql/down.sql", "key": ["entity_id"]},
                 "output": {"table": "downstream"}, "after": ["m"]},
        "m": matrix_job(),
    }
    cfg = write_config(tmp_path, sqlite_url, jobs)
    result = cli_run(cfg, "run", "--all", *as_of_arg())
    assert result.exit_code == 0, result.output
    ledger = pd.DataFrame(query(sqlite_url, "SELECT job, started_at, finished_at FROM scoring_runs"),
                          columns=["job", "started", "finished"])
    down = ledger[ledger["job"] == "down"].iloc[0]
    ups = ledger[ledger["job"] != "down"]
    assert all(_t(down["started"]) >= _t(f) for f in ups["finished"])
    assert query(sqlite_url, "SELECT count(*) FROM downstream") == [(180,)]  # all it read was published


def test_a_job_whose_upstream_failed_is_skipped_and_the_run_exits_1(tmp_path: Path, sqlite_url: str) -> None:
    load_table(sqlite_url, country_frame(30))
    per_country_models(tmp_path)
    (tmp_path / "models" / "m_BE.joblib").write_bytes(b"")  # BE cannot run (invalid)
    jobs = {"m": matrix_job(),
            "down": {"model": {"path": "models/m_AT.joblib"}, "after": ["m.BE"],
                     "source": {"table": "features", "key": ["entity_id"], "as_of_column": "snapshot_date"},
                     "output": {"table": "downstream"}}}
    cfg = write_config(tmp_path, sqlite_url, jobs)
    result = cli_run(cfg, "run", "--all", *as_of_arg())
    assert result.exit_code == 2, result.output  # an invalid job is exit 2, and wins over 1
    rows = dict(query(sqlite_url, "SELECT job, status FROM scoring_runs"))
    assert rows["m.BE"] == "invalid" and rows["down"] == "skipped"
    assert rows["m.AT"] == rows["m.CH"] == "succeeded"
    [(error,)] = query(sqlite_url, "SELECT error FROM scoring_runs WHERE job = 'down'")
    assert "upstream job 'm.BE'" in error


def test_an_upstream_job_held_by_another_run_skips_its_downstream_as_a_lock_exit_3(
    tmp_path: Path, sqlite_url: str
) -> None:
    """A cron overlap: another run holds an upstream job's lock. Its downstream job is not
    run here either (the holder's command runs it), as a lock skip: exit 3, not 1."""
    from tests.schedule_support import hold_job_lock

    load_table(sqlite_url, country_frame(30))
    per_country_models(tmp_path)
    jobs = {"m": matrix_job(),
            "down": {"model": {"path": "models/m_AT.joblib"}, "after": ["m.BE"],
                     "source": {"table": "features", "key": ["entity_id"], "as_of_column": "snapshot_date"},
                     "output": {"table": "downstream"}},
            "last": {"model": {"path": "models/m_AT.joblib"}, "after": ["down"],
                     "source": {"table": "features", "key": ["entity_id"], "as_of_column": "snapshot_date"},
                     "output": {"table": "downstream2"}}}
    cfg = write_config(tmp_path, sqlite_url, jobs)
    hold_job_lock(sqlite_url, "m.BE", AS_OF)
    result = cli_run(cfg, "run", "--all", *as_of_arg())
    assert result.exit_code == 3, result.output
    rows = dict(query(sqlite_url, "SELECT job, status FROM scoring_runs WHERE job <> 'm.BE' OR status <> 'running'"))
    assert rows["m.AT"] == rows["m.CH"] == "succeeded"
    assert rows["down"] == rows["last"] == "skipped"
    [(error,)] = query(sqlite_url, "SELECT error FROM scoring_runs WHERE job = 'down'")
    assert "another run held the lock of its upstream job 'm.BE'" in error


def test_a_dependency_cycle_is_a_configuration_error(tmp_path: Path, sqlite_url: str) -> None:
    load_table(sqlite_url, country_frame(10))
    per_country_models(tmp_path)
    base = matrix_job()
    cfg = write_config(tmp_path, sqlite_url, {"a": {**base, "after": ["b"]}, "b": {**base, "after": ["a"],
                                                                                   "output": {"table": "other"}}})
    result = cli_run(cfg, "run", "--all", *as_of_arg())
    assert result.exit_code == 2, result.output
    assert "cycle" in result.output and "a -> b" in result.output.replace(".AT", "").replace(".BE", "")


def test_a_sigtermed_fleet_run_prints_what_it_published_before_the_signal(tmp_path: Path, sqlite_url: str) -> None:
    """SIGTERM part-way through ``run m`` (20 jobs): exit 143, the runs in progress rolled
    back, and stdout still has the summary table of the jobs that ended before the signal
    (a cron log shows what was published), each as the ledger has it."""
    cfg = _twenty(tmp_path, sqlite_url, 1_500, chunk_size=100)
    run = Run(cfg, "run", "m", *as_of_arg(), "--parallel", "2")
    deadline = time.monotonic() + 90
    while not (_has_ledger(sqlite_url) and query(sqlite_url, "SELECT 1 FROM scoring_runs WHERE status = 'succeeded'")):
        assert time.monotonic() < deadline and run.proc.poll() is None, run.stderr
        time.sleep(0.05)
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish(timeout=60) == 128 + signal.SIGTERM, run.stderr
    assert run.proc.stdout is not None
    out = run.proc.stdout.read()
    published = set(query(sqlite_url, "SELECT job, run_id FROM scoring_runs WHERE status = 'succeeded'"))
    assert 0 < len(published) < 20, published
    shown = {(line.split()[0], int(line.split()[-2])) for line in out.splitlines()
             if " succeeded " in line and line.split()[-2].isdigit()}
    assert shown <= published, (shown, published)  # never a job said published that is not
    # Each published job is in the summary, but for those (at most one per running job,
    # --parallel 2) whose commit landed as the signal arrived: the ledger has those.
    assert len(published - shown) <= 2, (published - shown, out)
    assert "Interrupted by SIGTERM" in run.stderr
