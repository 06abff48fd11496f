"""A generated report opened in real headless Chromium: it loads with no console
error, fetches nothing outside the file, decodes every chart, and draws a page that
is not blank. In CI (env CI set) a missing Chromium or Playwright fails the test."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from batch_scorer.monitoring.report import JobReport, render_report
from tests.test_monitoring_report import EXTERNAL, synthetic_job

CHROMIUM = "/usr/bin/chromium"
# Debian's Chromium, nothing downloaded: no network services, no updates, no sync.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _require(present: bool, reason: str) -> None:
    if present:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the browser test (.ci/run installs Chromium, the test extra Playwright)")
    pytest.skip(reason)


def test_report_opens_in_headless_chromium_without_errors_or_outside_requests(tmp_path: Path) -> None:
    _require(Path(CHROMIUM).exists(), f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    _require(sync_playwright is not None, "Playwright is not installed (pip install -e '.[test]')")

    html = render_report([synthetic_job(0), synthetic_job(1), JobReport("new_job")], note="browser test")
    assert EXTERNAL.search(html) is None
    report = tmp_path / "report.html"
    report.write_text(html, encoding="utf-8")

    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
            title = page.title()
            shot = page.screenshot()
        finally:
            browser.close()

    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert title == "batch-scorer monitoring"
    assert len(images) == 10 and all(images)  # 5 charts for each of the two jobs with data
    pixels = Image.open(io.BytesIO(shot)).convert("RGB")
    colours = pixels.getcolors(maxcolors=1 << 24)
    assert colours is not None and len(colours) > 20, "the screenshot is blank"
