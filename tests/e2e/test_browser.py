"""One real-browser test: headless Chromium opens the Dagster UI, launches a materialization of a tiny
pipeline and sees it succeed."""

from __future__ import annotations

import shutil
import time

import pytest

from .servers import dagster_server, graphql

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.skipif(
    not shutil.which("chromium"), reason="Debian chromium not installed (make test installs it)"
)
def test_ui_materializes_tiny_pipeline(lmforge_home, tmp_path):
    from playwright.sync_api import sync_playwright

    with (
        dagster_server(["-f", "tests/e2e/toy_defs.py"], lmforge_home, tmp_path / "dev.log", dev=True) as url,
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--headless",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{url}/asset-groups/toy", wait_until="domcontentloaded")
            button = page.get_by_role("button", name="Materialize all")
            button.wait_for(timeout=60_000)
            # a first-visit modal may cover the page; dismiss it if it appears
            for label in ("Skip", "Dismiss", "Close"):
                b = page.get_by_role("button", name=label)
                if b.count():
                    b.first.click()
            button.click()
            deadline = time.time() + 120
            status = None
            while time.time() < deadline:
                runs = graphql(url, "{ runsOrError { ... on Runs { results { runId status } } } }")
                results = runs["runsOrError"]["results"]
                status = results[0]["status"] if results else None
                if status in {"SUCCESS", "FAILURE", "CANCELED"}:
                    break
                time.sleep(1)
            page.screenshot(path=str(tmp_path / "ui.png"))
            assert status == "SUCCESS", (tmp_path / "dev.log").read_text()[-3000:]
            # the UI itself shows the materialized assets
            page.goto(f"{url}/assets/toy/joined", wait_until="domcontentloaded")
            page.get_by_text("lmforge/version").first.wait_for(timeout=60_000)
        finally:
            browser.close()
    art = list((lmforge_home / "artifacts" / "toy_join").iterdir())
    assert any((a / "manifest.json").exists() for a in art)
