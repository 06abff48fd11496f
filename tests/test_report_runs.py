"""``batch-scorer report`` built from the database after real runs: each job's runs, its
score against the reference, PSI per feature and its metrics; opened in headless
Chromium it loads with no console error, draws a page that is not blank and
fetches nothing; a job filled to every chart's cap stays small enough that a
200-job fleet is under 5 MB."""

from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from batch_scorer.monitoring.profile import SCORE, Profile, bins_from_reference
from batch_scorer.storage.db import create_engine
from batch_scorer.storage.ddl import create_tool_tables
from batch_scorer.storage.schema import drift, feature_profiles, model_metrics, scoring_runs, utcnow
from tests import test_faults_privileges as privileges
from tests.browser_support import open_in_chromium
from tests.faults_support import ok
from tests.helpers import (
    AS_OF,
    OTHER_AS_OF,
    cli_run,
    features_frame,
    job,
    load_table,
    query,
    save_model,
    train,
    write_config,
)
from tests.test_faults_privileges import Deployment, _config
from tests.test_monitoring_report import EXTERNAL, PNG

deployment = privileges.deployment  # the least-privilege roles fixture


def _fleet_of_runs(tmp_path: Path, url: str) -> Path:
    """Job `churn`: a reference run, a run with x1 shifted, a failed run, labels evaluated;
    job `idle`: configured, never run."""
    reference = features_frame(1_500, seed=1, as_of=OTHER_AS_OF)
    later = features_frame(1_500, seed=2, as_of=AS_OF)
    later["x1"] = later["x1"] + 2
    load_table(url, pd.concat([reference, later], ignore_index=True))
    outcomes = pd.DataFrame({"entity_id": later["entity_id"], "outcome_date": AS_OF,
                             "churned": (later["x2"] > 0).astype(int)})
    load_table(url, outcomes, table="outcomes", outcome_date=sa.Date())
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    labels = {"table": "outcomes", "as_of_column": "outcome_date", "label_column": "churned"}
    cfg = write_config(tmp_path, url, {"churn": job(labels=labels), "idle": job()})
    for day in (OTHER_AS_OF, AS_OF):
        assert cli_run(cfg, "run", "churn", "--as-of", day.isoformat()).exit_code == 0
    assert cli_run(cfg, "run", "churn", "--as-of", "2026-04-30").exit_code == 1  # no rows that day: failed
    assert cli_run(cfg, "evaluate", "churn").exit_code == 0
    return cfg


def _section(page: str, job: str) -> str:
    start = page.index(f'<section id="job-{job}">')
    return page[start : page.index("</section>", start)]


def test_the_report_shows_each_jobs_runs_drift_score_and_metrics(tmp_path: Path, db_url: str) -> None:
    cfg = _fleet_of_runs(tmp_path, db_url)
    out = tmp_path / "site" / "report.html"
    out.parent.mkdir()
    result = cli_run(cfg, "report", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert re.search(r"wrote .*report\.html \(2 job\(s\), \d+ KB\)", result.output)
    page = out.read_text(encoding="utf-8")
    assert EXTERNAL.search(page) is None and "<script" not in page.lower()
    churn = _section(page, "churn")
    assert "drift alerts: <b>x1 PSI" in churn
    assert '<span class="badge bad">failed</span>' in churn  # the last run failed
    assert "no data yet" not in churn  # runs, score vs reference, PSI heatmap and metrics all drawn
    assert len(PNG.findall(churn)) == 3 + 3  # runs, score, PSI; three of the four metrics
    assert all(f"Metric: {m}" in churn for m in ("accuracy", "brier", "log_loss"))
    assert _section(page, "idle").count("no data yet") == 4
    assert out.stat().st_mode & 0o044  # readable by the web server serving it


def test_the_report_of_real_runs_opens_in_headless_chromium(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _fleet_of_runs(tmp_path, sqlite_url)
    out = tmp_path / "report.html"
    assert cli_run(cfg, "report", "churn", "idle", "--out", str(out)).exit_code == 0

    view = open_in_chromium(out, full_page=True)

    assert view.errors == []
    assert view.outside_requests() == []
    assert len(view.images) == 6 and all(view.images)
    assert view.colours() > 20, "the screenshot is blank"


def test_a_job_at_every_charts_cap_keeps_a_200_job_report_under_5_mb(tmp_path: Path, sqlite_url: str) -> None:
    """60 runs, 25 profiled columns, 4 metrics for a champion and a challenger: every
    chart at its cap (the report draws the last 60 runs, 15 features, 3 metrics)."""
    names = [f"job_{i}" for i in range(3)]
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, sqlite_url, {n: job() for n in names})
    engine = create_engine(sqlite_url)
    try:
        create_tool_tables(engine)
        with engine.begin() as conn:
            for i, name in enumerate(names):
                _fill(conn, name, first_run=1 + 100 * i, seed=i)
    finally:
        engine.dispose()
    out = tmp_path / "report.html"
    assert cli_run(cfg, "report", "--out", str(out)).exit_code == 0
    page = out.read_text(encoding="utf-8")
    largest = max(len(_section(page, n)) for n in names)
    overview = page.index("<section")  # title and the table of every job
    assert 200 * (largest + overview / len(names)) < 5_000_000, f"{largest:,} characters per job"
    assert len(PNG.findall(_section(page, names[0]))) == 6


def _fill(conn: sa.Connection, job: str, first_run: int, seed: int) -> None:
    """A job's history as runs leave it: ledger rows, profiles of the reference and the last run,
    drift rows of every run, metric rows."""
    rng = np.random.default_rng(seed)
    columns = [f"feature_{k}" for k in range(24)] + [SCORE]
    reference = pd.DataFrame({c: rng.normal(size=2_000) for c in columns})
    bins = bins_from_reference(reference, {})
    now = utcnow()
    runs, drifts, metrics = [], [], []
    for k in range(70):
        run_id, day = first_run + k, date(2026, 1, 1) + timedelta(days=k)
        runs.append({"run_id": run_id, "job": job, "model_version": "v1", "as_of": day, "trigger": "cron",
                     "status": "succeeded", "started_at": now, "finished_at": now, "rows_read": 100_000,
                     "rows_scored": 99_000, "rows_rejected": 1_000, "host": "h", "pid": 1, "drift_status": "ok"})
        drifts += [{"run_id": run_id, "job": job, "as_of": day, "model_version": "v1", "feature": c,
                    "psi_reference": float(rng.gamma(1, 0.05)), "status": "ok",
                    "reference_profile": f"run:{first_run}"} for c in columns]
        metrics += [{"job": job, "as_of": day, "model_version": v, "role": role, "challenger": label,
                     "metric": m, "value": float(rng.random()), "rows": 1_000, "evaluated_at": now}
                    for m in ("roc_auc", "log_loss", "brier", "accuracy")
                    for v, role, label in (("v1", "champion", None), ("v2", "challenger", "candidate"))]
    conn.execute(scoring_runs.insert(), runs)
    conn.execute(drift.insert(), drifts)
    conn.execute(model_metrics.insert(), metrics)
    for run_id in (first_run, first_run + 69):
        profile = Profile(bins)
        profile.update(reference * (1.0 if run_id == first_run else 1.3))
        conn.execute(feature_profiles.insert(), [
            {**row, "profile_id": f"run:{run_id}", "run_id": run_id, "job": job, "model_version": "v1",
             "kind": "numeric"} for row in profile.to_rows()])


def test_a_bi_reader_role_can_make_the_report_and_read_the_monitoring_tables(
    tmp_path: Path, deployment: Deployment
) -> None:
    """sql/roles_postgresql.sql's reader reads no ledger table, only the views: the report
    reads the runs through scoring_runs_bi, drift through its own tables."""
    dep = deployment
    ok(_config(tmp_path, dep, dep.owner), "init-db")
    dep.apply_roles_sql()  # grants the reader what init-db created
    ok(_config(tmp_path, dep, dep.scorer), "run", "j", "--as-of", AS_OF.isoformat())

    reader = _config(tmp_path, dep, dep.reader)
    out = tmp_path / "bi_report.html"
    ok(reader, "report", "--out", str(out))
    page = out.read_text(encoding="utf-8")
    assert _section(page, "j").count("no data yet") == 1  # runs, score and PSI drawn; no metrics evaluated yet
    bi = dep.as_role(dep.reader)
    for table in ("drift", "drift_latest", "feature_profiles", "model_metrics", "scoring_runs_bi"):
        assert query(bi, f"SELECT count(*) FROM {table}")[0][0] >= 0
    assert query(bi, "SELECT DISTINCT status FROM drift_latest") == [("ok",)]


def test_the_header_score_chart_and_latest_runs_table_agree_after_an_older_day_is_re_scored(
    tmp_path: Path, db_url: str
) -> None:
    """Three days scored with model v1, then the first day re-scored with v2 (the newest run,
    of an older as_of): the header shows the latest as_of's run and its version (v1), the
    score chart is that run's, and the table of the latest runs lists the re-score first
    and the run it replaced as replaced. A job whose last run failed on a drift alert
    (``on_alert: fail``, nothing published) says so instead of "drift alerts: none"."""
    days = [AS_OF - timedelta(days=2), AS_OF - timedelta(days=1), AS_OF]
    frames = [features_frame(400, seed=10 + i, as_of=d) for i, d in enumerate(days)]
    frames[-1]["x1"] = frames[-1]["x1"] + 3  # the last day drifts
    load_table(db_url, pd.concat(frames, ignore_index=True))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    save_model(train("binary", features_frame(300, seed=99)), tmp_path / "models" / "m2.joblib")
    v1 = {"model": {"path": "models/m.joblib", "version": "v1"}}
    jobs = {"churn": {**job(), **v1}, "strict": {**job(output="strict_out"), **v1, "monitor": {"on_alert": "fail"}}}
    cfg = write_config(tmp_path, db_url, jobs)
    for day in days[:2]:
        assert cli_run(cfg, "run", "--all", "--as-of", day.isoformat()).exit_code == 0
    assert cli_run(cfg, "run", "churn", "--as-of", days[2].isoformat()).exit_code == 0
    assert cli_run(cfg, "run", "strict", "--as-of", days[2].isoformat()).exit_code == 1  # the drift alert
    jobs["churn"]["model"] = {"path": "models/m2.joblib", "version": "v2"}
    cfg = write_config(tmp_path, db_url, jobs)
    assert cli_run(cfg, "run", "churn", "--as-of", days[0].isoformat()).exit_code == 0  # newest run, oldest day
    out = tmp_path / "report.html"
    assert cli_run(cfg, "report", "--out", str(out)).exit_code == 0
    page = out.read_text(encoding="utf-8")

    churn = _section(page, "churn")
    assert f"model version <b>v1</b> &middot; last run {days[2].isoformat()}" in churn
    [(rerun, replaced)] = query(db_url, "SELECT max(run_id), min(run_id) FROM scoring_runs "
                                        "WHERE job = 'churn' AND as_of = :d", d=days[0])
    table = churn[churn.index('<table class="runs">'):]
    rows = re.findall(r"<tr><td>([^<]*)</td><td>(\d+)</td><td>([^<]*)</td><td>(.*?)</td>", table)
    assert rows[0][:3] == (days[0].isoformat(), str(rerun), "v2")  # the newest run first
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), key=int, reverse=True)
    assert f"replaced by run {rerun}" in dict((r[1], r[3]) for r in rows)[str(replaced)]
    # The score chart is the latest as_of's published run against its reference.
    from batch_scorer.monitoring.reporting import job_report
    from batch_scorer.storage import profiles

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            shown = job_report(conn, "churn").score_distribution
            [(latest,)] = query(db_url, "SELECT run_id FROM scoring_runs WHERE job = 'churn' AND as_of = :d",
                                d=days[2])
            current = Profile.from_rows(profiles.profile_rows(conn, profiles.run_profile_id(latest), SCORE))
    finally:
        engine.dispose()
    counts = current.counts(SCORE)
    assert np.allclose(shown["current_share"].to_numpy(dtype=float), counts / counts.sum())

    strict = _section(page, "strict")
    assert "failed</span> &middot; drift alerts: <b>the last run failed on a drift alert" in strict
    assert "drift alerts: <b>none" not in strict
