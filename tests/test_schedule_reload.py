"""SIGHUP makes the daemon re-read its config file: a good edit swaps in the new
jobs and schedules (one log line says what changed), a bad one keeps the old
configuration (one log line with the error); the daemon lives on, no run is left
``running``. A change of database.url needs a restart."""

from __future__ import annotations

import logging
import signal
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from batch_scorer.config import config_from_dict, load_config
from batch_scorer.scheduling.daemon import Daemon
from batch_scorer.storage.db import create_engine
from tests.helpers import job, query, write_config
from tests.schedule_support import count_lines, daemon, scheduled_job, stop, wait_count

FIRE_OK = ": succeeded, run "


def _edit(cfg: Path, change: dict[str, object]) -> None:
    data = yaml.safe_load(cfg.read_text())
    data["jobs"].update(change)
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))


def test_sighup_swaps_in_a_good_edit_and_keeps_the_old_config_on_a_bad_one(tmp_path: Path, sqlite_url: str) -> None:
    # Ten chunks a run: a progress line comes while the run still has chunks to go.
    cfg = scheduled_job(tmp_path, sqlite_url, "* * * * * *", rows=2_000, chunk_size=200)
    run = daemon(cfg)
    wait_count(run, FIRE_OK, 1)

    # A new job, on a seconds-field schedule, into its own table; SIGHUP mid-run.
    first = yaml.safe_load(cfg.read_text())["jobs"]["j"]
    _edit(cfg, {"k": {**first, "output": {"table": "predictions_k", "pass_through": []}}})
    run.wait_for(lambda ln: "job j run" in ln and ": 200 rows read" in ln)
    run.proc.send_signal(signal.SIGHUP)
    reloaded = run.wait_for(lambda ln: "reloaded" in ln)
    assert "jobs added: k" in reloaded and "removed" not in reloaded
    run.wait_for(lambda ln: "job k fire" in ln and FIRE_OK in ln)

    # A bad edit: the error is logged in one line and job j keeps its schedule.
    _edit(cfg, {"j": {**first, "schedule": "61 * * * * *"}})
    run.proc.send_signal(signal.SIGHUP)
    failed = run.wait_for(lambda ln: "reloading" in ln and "failed" in ln)
    assert "jobs.j.schedule" in failed and "61" in failed and "keeping the configuration in use" in failed
    before = count_lines(run, "job j fire")
    wait_count(run, "job j fire", before + 2)
    assert run.proc.poll() is None

    assert stop(run) == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert count_lines(run, "reloaded") == 1
    statuses = query(sqlite_url, "SELECT job, status, count(*) FROM scoring_runs GROUP BY job, status")
    assert {(j, s) for j, s, _ in statuses} == {("j", "succeeded"), ("k", "succeeded")}, statuses


def _write(tmp_path: Path, url: str, jobs: dict[str, str]) -> Path:
    return write_config(tmp_path, url, {n: job(schedule=s) for n, s in jobs.items()})


def test_reload_reschedules_adds_removes_and_keeps_the_database_url(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="batch_scorer")
    url = f"sqlite:///{tmp_path / 'x.db'}"
    path = _write(tmp_path, url, {"a": "0 2 * * *", "b": "0 3 * * *", "c": "0 4 * * *"})
    old = load_config(path)
    _write(tmp_path, f"sqlite:///{tmp_path / 'other.db'}", {"a": "30 2 * * *", "b": "0 3 * * *", "d": "0 5 * * *"})
    engine = create_engine(url)
    d = Daemon(old, engine, reload=lambda: load_config(path))
    d.start_scheduler(datetime.now(UTC))
    try:
        d._reload()
        assert d.cfg.database.url == url  # needs a restart: the old one stays in use
        assert sorted(d.triggers) == ["a", "b", "d"]
        assert {j.id: j.trigger.expr for j in d.scheduler.get_jobs()} == {
            "a": "30 2 * * *", "b": "0 3 * * *", "d": "0 5 * * *",
        }
    finally:
        d.scheduler.shutdown(wait=False)
        engine.dispose()
    [line] = [r.getMessage() for r in caplog.records if "reloaded" in r.getMessage()]
    assert line.endswith("jobs added: d; jobs removed: c; jobs rescheduled: a; database.url changed: "
                         "that needs a restart of the daemon; still using the old value"), line


def test_sighup_with_a_config_object_has_nothing_to_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config_from_dict({"database": {"url": f"sqlite:///{tmp_path / 'x.db'}"},
                            "jobs": {"a": job(schedule="0 2 * * *")}}, base_dir=tmp_path)
    engine = create_engine(cfg.database.url)
    try:
        Daemon(cfg, engine)._reload()
    finally:
        engine.dispose()
    assert "nothing to reload" in caplog.text


def test_a_reload_may_lower_parallel_jobs_but_raising_it_needs_a_restart(tmp_path: Path) -> None:
    """The daemon's connection pool is sized for defaults.parallel_jobs at start: a reload
    that raises it keeps the old value (and says so); one that lowers it applies."""
    from batch_scorer.scheduling.reload import config_changes, keep_restart_settings

    base = {"database": {"url": f"sqlite:///{tmp_path / 'x.db'}"}, "timezone": "UTC",
            "jobs": {"a": {**job(), "schedule": "0 2 * * *"}}}
    at = {n: config_from_dict({**base, "defaults": {"parallel_jobs": n}}) for n in (4, 2, 8)}
    raised = config_changes(at[4], at[8], ["a"], ["a"])
    assert "defaults.parallel_jobs (raised) changed: that needs a restart" in raised.summary()
    assert keep_restart_settings(at[4], at[8]).defaults.parallel_jobs == 4
    assert keep_restart_settings(at[4], at[2]).defaults.parallel_jobs == 2
    assert "restart" not in config_changes(at[4], at[2], ["a"], ["a"]).summary()
