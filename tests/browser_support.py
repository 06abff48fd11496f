"""Opening an HTML file in real headless Chromium (Debian's, driven by Playwright): what
the page logged, fetched and drew. In CI (env CI set) a missing Chromium or Playwright
fails the test; elsewhere it skips."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

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


@dataclass
class PageView:
    """What a page did when it loaded."""

    errors: list[str]  # console errors and uncaught exceptions
    requests: list[str]  # every URL it asked for
    images: list[bool]  # per <img>: decoded with a width
    title: str
    screenshot: bytes

    def outside_requests(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(("file:", "data:"))]

    def colours(self) -> int:
        """Distinct colours of the screenshot (a blank page has one or two)."""
        found = Image.open(io.BytesIO(self.screenshot)).convert("RGB").getcolors(maxcolors=1 << 24)
        return len(found) if found is not None else 0


def require(present: bool, reason: str) -> None:
    if present:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the browser test (.ci/run installs Chromium, the test extra Playwright)")
    pytest.skip(reason)


def open_in_chromium(page_file: Path, *, full_page: bool = False) -> PageView:
    """Load ``page_file`` in headless Chromium and report what it did."""
    require(Path(CHROMIUM).exists(), f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    require(sync_playwright is not None, "Playwright is not installed (pip install -e '.[test]')")
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
            return PageView(errors, requests, images, page.title(), page.screenshot(full_page=full_page))
        finally:
            browser.close()
