"""The HTML report: one self-contained file (no external URL, no script, charts as
inline palette PNGs), under 5 MB for a fleet of 200 jobs, with each job's header
naming its last run status and drift alerts, and "no data yet" for what is missing."""

from __future__ import annotations

import base64
import datetime as dt
import io
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from batch_scorer.monitoring.profile import SCORE, Profile, bins_from_reference
from batch_scorer.monitoring.report import JobReport, render_report, share_table

ROOT = Path(__file__).resolve().parent.parent
# Anything that would make a browser fetch: a scheme URL, a protocol-relative one,
# or a src/href/url() that is neither a data: URI nor a fragment of this page.
EXTERNAL = re.compile(
    r"https?://|//[a-z0-9.-]+\.[a-z]{2,}|(?:src|href)\s*=\s*(?![\"']?(?:data:|#))|url\((?!\s*[\"']?data:)|@import",
    re.IGNORECASE,
)
PNG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def synthetic_job(i: int, runs: int = 30, features: int = 12) -> JobReport:
    """A job with a month of daily runs, a drifting feature, and a champion and a challenger."""
    rng = np.random.default_rng(i)
    days = [dt.date(2026, 1, 1) + dt.timedelta(days=d) for d in range(runs)]
    status = np.where(rng.random(runs) < 0.1, "failed", "succeeded")
    status[-1] = "succeeded"
    run_frame = pd.DataFrame(
        {
            "as_of": days,
            "run_id": np.arange(runs) + 1_000 * i,
            "status": status,
            "rows_read": rng.integers(90_000, 110_000, runs),
            "rows_scored": rng.integers(80_000, 100_000, runs),
            "rows_rejected": rng.integers(0, 5_000, runs),
            "seconds": rng.uniform(5, 60, runs),
            "model_version": "v3",
        }
    )
    names = [f"feature_{k}" for k in range(features)]
    psi = pd.DataFrame(
        [
            (day, name, float(rng.gamma(1, 0.04) + (0.3 if name == "feature_3" and j > runs * 2 // 3 else 0)))
            for j, day in enumerate(days)
            for name in names
        ],
        columns=["as_of", "feature", "psi"],
    )
    metrics = pd.DataFrame(
        [
            (day, version, role, metric, float(base + rng.normal(0, 0.01)))
            for day in days
            for version, role in (("v3", "champion"), ("v4", "challenger"))
            for metric, base in (("auc", 0.8), ("log_loss", 0.4))
        ],
        columns=["as_of", "model_version", "role", "metric", "value"],
    )
    score = pd.DataFrame(
        {
            "bin": [f"({k / 10:.1f}, {(k + 1) / 10:.1f}]" for k in range(10)] + ["NULL"],
            "reference_share": [0.1] * 10 + [0.0],
            "current_share": list(rng.dirichlet(np.full(10, 30))) + [0.0],
        }
    )
    return JobReport(f"job_{i:03d}", runs=run_frame, score_distribution=score, psi=psi, metrics=metrics)


def _section(page: str, job: str) -> str:
    start = page.index(f'<section id="job-{job}">')
    return page[start : page.index("</section>", start)]


def test_a_fleet_of_200_jobs_gives_one_self_contained_report_under_5_mb() -> None:
    page = render_report([synthetic_job(i) for i in range(200)], note="synthetic fleet")
    assert len(page) < 5_000_000, f"{len(page):,} characters"
    assert page.count("<section ") == 200 and all(f'id="job-job_{i:03d}"' in page for i in range(200))
    assert EXTERNAL.search(page) is None, EXTERNAL.search(page)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    images = PNG.findall(page)
    assert len(images) == 200 * 5  # rows, score, PSI heatmap, two metrics per job
    for data in images[:5]:
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        assert image.format == "PNG" and image.mode == "P"  # reduced to a palette
        assert len(image.getcolors()) > 1  # not blank


def test_header_names_the_last_run_status_and_the_latest_alert_features() -> None:
    report = synthetic_job(1)
    report.runs.loc[report.runs.index[-1], "status"] = "failed"
    last_day = report.psi["as_of"].max()
    latest = report.psi["as_of"] == last_day
    report.psi.loc[latest, "psi"] = 0.01
    report.psi.loc[latest & (report.psi["feature"] == "feature_7"), "psi"] = 0.83
    report.psi.loc[latest & (report.psi["feature"] == "feature_2"), "psi"] = 0.41
    report.psi.loc[latest & (report.psi["feature"] == "feature_5"), "psi"] = 0.12
    report.psi.loc[~latest & (report.psi["feature"] == "feature_9"), "psi"] = 5.0  # old news
    section = _section(render_report([report]), "job_001")
    facts = section[section.index('<p class="facts">') : section.index("</p>", section.index('class="facts"'))]
    assert "model version <b>v3</b>" in facts
    assert "last run 2026-01-30" in facts and '<span class="badge bad">failed</span>' in facts
    assert "drift alerts: <b>feature_7 PSI 0.83, feature_2 PSI 0.41</b>" in facts
    assert "warnings: feature_5 PSI 0.12" in facts and "feature_9" not in facts


def test_alerts_of_an_older_as_of_than_the_last_run_say_which_as_of_they_are() -> None:
    """The last run (latest as_of) was retracted or failed, so the latest PSI are an earlier
    as_of's (the latest published): the header names that as_of with them."""
    report = synthetic_job(2)
    last_day = report.runs["as_of"].max()
    report.runs.loc[report.runs["as_of"] == last_day, "status"] = "retracted"
    report.psi = report.psi[report.psi["as_of"] != last_day].copy()
    older = report.psi["as_of"].max()
    report.psi.loc[report.psi["as_of"] == older, "psi"] = 0.01
    report.psi.loc[(report.psi["as_of"] == older) & (report.psi["feature"] == "feature_3"), "psi"] = 0.5
    section = _section(render_report([report]), "job_002")
    assert f"drift alerts: <b>feature_3 PSI 0.50 (as_of {older.isoformat()}, the latest published)</b>" in section


def test_a_job_without_any_data_says_no_data_yet() -> None:
    section = _section(render_report([JobReport("new_job")]), "new_job")
    assert section.count("no data yet") == 4  # runs, score, PSI, metrics
    assert "no runs yet" in section and "drift alerts: <b>none</b>" in section
    assert "<img" not in section


def test_the_score_distribution_comes_from_real_profiles() -> None:
    rng = np.random.default_rng(2)
    bins = bins_from_reference(pd.DataFrame({SCORE: rng.random(5_000)}), {SCORE: "numeric"})
    reference, current = Profile(bins), Profile(bins)
    reference.update(pd.DataFrame({SCORE: rng.random(5_000)}))
    current.update(pd.DataFrame({SCORE: np.r_[rng.random(3_000) ** 2, [np.nan] * 10]}))
    table = share_table(reference, current)
    assert list(table.columns) == ["bin", "reference_share", "current_share"]
    assert table["bin"].iloc[-1] == "NULL" and table["current_share"].sum() == pytest.approx(1.0)
    assert table["current_share"].iloc[0] > 2 * table["reference_share"].iloc[0]  # squared: mass moves low
    page = render_report([JobReport("scored", score_distribution=table)])
    assert len(PNG.findall(_section(page, "scored"))) == 1


def test_text_from_the_database_is_escaped() -> None:
    psi = pd.DataFrame({"as_of": [dt.date(2026, 1, 1)], "feature": ["<script>alert(1)</script>"], "psi": [0.9]})
    page = render_report([JobReport("j", psi=psi)])
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; PSI 0.90" in page


def test_a_frame_missing_a_column_is_a_clear_error() -> None:
    runs = synthetic_job(0).runs.drop(columns="rows_rejected")
    with pytest.raises(ValueError, match="job 'broken': the report's runs frame has no column 'rows_rejected'"):
        render_report([JobReport("broken", runs=runs)])


def test_matplotlib_is_optional_and_its_global_state_is_left_alone() -> None:
    script = textwrap.dedent(
        """
        import sys
        import batch_scorer.monitoring.report as report
        assert "matplotlib" not in sys.modules, "importing the report module imported matplotlib"
        sys.modules["matplotlib"] = None  # as if the report extra were not installed
        try:
            report.render_report([report.JobReport("j")])
        except report.UsageError as exc:
            assert "pip install 'batch-scorer[report]'" in str(exc), exc
        else:
            raise AssertionError("no error without matplotlib")
        del sys.modules["matplotlib"]
        import matplotlib
        # (reading rcParams["backend"] would itself pick a backend through pyplot)
        settings = lambda: {k: matplotlib.rcParams[k] for k in matplotlib.rcParams if k != "backend"}
        before = settings()
        report.render_report([report.JobReport("j")])
        assert "matplotlib.pyplot" not in sys.modules, "pyplot (global figure state) was imported"
        assert settings() == before
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "MPLBACKEND": ""},
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
