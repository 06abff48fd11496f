"""A generated report opened in real headless Chromium: it loads with no console
error, fetches nothing outside the file, decodes every chart, and draws a page that
is not blank. In CI (env CI set) a missing Chromium or Playwright fails the test."""

from __future__ import annotations

from pathlib import Path

from batch_scorer.monitoring.report import JobReport, render_report
from tests.browser_support import open_in_chromium
from tests.test_monitoring_report import EXTERNAL, synthetic_job


def test_report_opens_in_headless_chromium_without_errors_or_outside_requests(tmp_path: Path) -> None:
    html = render_report([synthetic_job(0), synthetic_job(1), JobReport("new_job")], note="browser test")
    assert EXTERNAL.search(html) is None
    report = tmp_path / "report.html"
    report.write_text(html, encoding="utf-8")

    view = open_in_chromium(report)

    assert view.errors == []
    assert view.outside_requests() == []
    assert view.title == "batch-scorer monitoring"
    assert len(view.images) == 10 and all(view.images)  # 5 charts for each of the two jobs with data
    assert view.colours() > 20, "the screenshot is blank"
