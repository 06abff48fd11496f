"""The daemon runs the fires that are due together as one batch: after: order holds, and
jobs reading the same rows share the read (a matrix firing at 02:00 is one batch)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.fleet_support import COUNTRIES, country_frame, matrix_job, per_country_models
from tests.helpers import load_table, query, write_config
from tests.schedule_support import daemon, stop, wait_count


def test_fires_due_together_run_as_one_batch_in_after_order(tmp_path: Path, sqlite_url: str) -> None:
    load_table(sqlite_url, country_frame(40))
    per_country_models(tmp_path)
    every_3s = "*/3 * * * * *"
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "down.sql").write_text(
        "SELECT p.entity_id, f.x1, f.x2, f.x3, f.color FROM predictions p JOIN features f "
        "ON f.entity_id = p.entity_id WHERE p.as_of = :as_of AND p.job LIKE 'm.%'")
    jobs = {
        "m": {**matrix_job(), "schedule": every_3s,
              "source": {"table": "features", "key": ["entity_id"], "where": {"country": "{country}"}}},
        "down": {"model": {"path": "models/m_AT.joblib"}, "source": {"query": "sql/down.sql", "key": ["entity_id"]},
                 "output": {"table": "downstream"}, "after": ["m"], "schedule": every_3s},
    }
    cfg = write_config(tmp_path, sqlite_url, jobs, scheduler={"catch_up_hours": 0})
    run = daemon(cfg)
    try:
        wait_count(run, "job down fire", 2, timeout=40)
    finally:
        assert stop(run) == 0, run.stderr
    assert {s for (s,) in query(sqlite_url, "SELECT status FROM scoring_runs")} == {"succeeded"}
    # Per fire time: the downstream job ran after every upstream job of the same fire.
    done: dict[str, dict[str, int]] = {}
    for job, fire, run_id in re.findall(r"job (\S+) fire (\S+) \(schedule\).*: succeeded, run (\d+)", run.stderr):
        done.setdefault(fire, {})[job] = int(run_id)
    batches = [jobs for jobs in done.values() if "down" in jobs]
    assert len(batches) >= 2, run.stderr
    for jobs in batches:
        assert set(jobs) == {"down", *(f"m.{c}" for c in COUNTRIES)}, jobs
        assert all(jobs["down"] > run_id for job, run_id in jobs.items() if job != "down"), jobs
    assert query(sqlite_url, "SELECT count(*) FROM downstream_latest") == [(120,)]


def test_schedule_and_next_take_a_matrix_name_as_run_does(tmp_path: Path) -> None:
    from tests.helpers import cli_run

    jobs = {"m": {**matrix_job(), "schedule": "0 2 * * *"},
            "other": {**matrix_job(["XX"]), "matrix": None, "model": {"path": "models/m_AT.joblib"},
                      "output": {"table": "other"}, "schedule": "0 3 * * *"}}
    jobs["other"].pop("matrix")
    jobs["other"]["source"] = {"table": "features", "key": ["entity_id"]}
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path}/x.db", jobs)
    result = cli_run(cfg, "schedule", "--next", "1", "m")
    assert result.exit_code == 0, result.output
    named = set(re.findall(r"\bm\.\w+|\bother\b", result.output))
    assert named == {f"m.{c}" for c in COUNTRIES}, result.output
    unknown = cli_run(cfg, "schedule", "--next", "1", "mm")
    assert unknown.exit_code == 2 and "mm" in unknown.output


def test_a_fire_of_more_jobs_than_the_old_pool_held_runs_them_all_on_postgres(tmp_path: Path, pg_url: str) -> None:
    """Twelve jobs due in the same second on PostgreSQL at the default parallel_jobs (10):
    the daemon's engine is sized for that many jobs at once (it had a fixed pool of 6 + 6,
    and most of a fire's jobs failed with "QueuePool limit ... reached" after 30 s, some
    with no ledger row). Every fire of every job succeeds, each recorded once."""
    load_table(pg_url, country_frame(40))
    per_country_models(tmp_path)
    every_5s = "*/5 * * * * *"
    source = {"table": "features", "key": ["entity_id"], "where": {"country": "{country}"}}
    jobs = {name: {**matrix_job(), "schedule": every_5s, "source": source,
                   "output": {"table": f"{name}_out", "pass_through": ["country"]}}
            for name in ("a", "b", "c", "d")}  # 4 x 3 countries = 12 jobs, 3 read groups
    cfg = write_config(tmp_path, pg_url, jobs, scheduler={"catch_up_hours": 0})
    run = daemon(cfg)
    try:
        wait_count(run, ": succeeded, run", 24, timeout=90)
    finally:
        assert stop(run) == 0, run.stderr
    assert "QueuePool" not in run.stderr
    statuses = query(pg_url, "SELECT status, count(*) FROM scoring_runs GROUP BY status")
    assert {s for s, _ in statuses} == {"succeeded"}, statuses
    fires = query(pg_url, "SELECT job, as_of, count(*) FROM scoring_runs GROUP BY job, as_of")
    assert {job for job, _, _ in fires} == {f"{n}.{c}" for n in "abcd" for c in COUNTRIES}
