"""Real-browser tests: headless Chromium opens the Dagster UI, launches a materialization of a tiny pipeline
with "Materialize all" and sees it succeed, with or without Dagster's first-visit dialog in the way."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from .servers import dagster_server, graphql, run_ids, wait_for_new_run
from .ui import SEEN_FIRST_VISIT, TIMEOUT_MS, DagsterPage, launch

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

needs_chromium = pytest.mark.skipif(
    not shutil.which("chromium"), reason="Debian chromium not installed (make test installs it)"
)

TOY_ASSETS = {("toy", "words"), ("toy", "more"), ("toy", "upper"), ("toy", "joined")}
NUX_TITLE = "Join the Dagster community"
GRAPHQL = re.compile(r".*/graphql.*")


@pytest.fixture(scope="module")
def toy_ui(tmp_path_factory):
    """`dagster dev` over the toy code location, shared by this module's tests (startup dominates their
    time); yields (url, LMFORGE_HOME, server log)."""
    home = tmp_path_factory.mktemp("ui") / "lmforge_home"
    home.mkdir()
    log = home.parent / "dev.log"
    with dagster_server(["-f", "tests/e2e/toy_defs.py"], home, log, dev=True) as url:
        yield url, home, log


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        try:
            yield b
        finally:
            b.close()


def materialize_all(ui: DagsterPage, url: str, log: Path) -> dict:
    """Click "Materialize all" on the toy group; return the run that click launched, finished."""
    known = run_ids(url)
    ui.goto("/asset-groups/toy")
    ui.click(ui.page.get_by_role("button", name="Materialize all"))
    run = wait_for_new_run(url, known, TOY_ASSETS)
    assert run["status"] == "SUCCESS", (run, log.read_text()[-3000:])
    return run


@needs_chromium
def test_ui_materializes_tiny_pipeline(toy_ui, browser, tmp_path):
    url, home, log = toy_ui
    ui = DagsterPage(browser, url)
    try:
        materialize_all(ui, url, log)
        ui.page.screenshot(path=str(tmp_path / "ui.png"))
        # the UI itself shows the materialized asset with its lmforge metadata
        ui.goto("/assets/toy/joined")
        ui.page.get_by_text("lmforge/version").first.wait_for(timeout=TIMEOUT_MS)
    finally:
        ui.close()
    art = list((home / "artifacts" / "toy_join").iterdir())
    assert any((a / "manifest.json").exists() for a in art)


@needs_chromium
def test_ui_click_waits_out_a_first_visit_dialog_that_opens_late(toy_ui, browser):
    """The first-visit dialog opens only after "Materialize all" is on screen (its server query is held
    until then), so a test that looked for dialogs before clicking would click into its backdrop."""
    url, home, log = toy_ui
    assert graphql(url, "{ shouldShowNux }")["shouldShowNux"], "the instance already recorded the dialog"
    ui = DagsterPage(browser, url, suppress_first_visit=False)
    held = []

    def hold_nux_query(route):
        if "ShouldShowNux" in (route.request.post_data or route.request.url):
            held.append(route)
        else:
            route.continue_()

    try:
        ui.page.route(GRAPHQL, hold_nux_query)
        ui.goto("/asset-groups/toy")
        button = ui.page.get_by_role("button", name="Materialize all")
        button.wait_for(timeout=TIMEOUT_MS)
        # the route handler runs while Playwright waits; poll for the held request, bounded
        for _ in range(TIMEOUT_MS // 100):
            if held:
                break
            ui.page.wait_for_timeout(100)
        assert held, "the webapp never asked whether to show the first-visit dialog"
        held[0].continue_()
        ui.page.unroute(GRAPHQL)
        dialog = ui.page.get_by_role("dialog").filter(has_text=NUX_TITLE)
        dialog.wait_for(timeout=TIMEOUT_MS)

        known = run_ids(url)
        ui.click(button)
        run = wait_for_new_run(url, known, TOY_ASSETS)
        assert run["status"] == "SUCCESS", (run, log.read_text()[-3000:])
        assert any(NUX_TITLE in d for d in ui.dismissed), ui.dismissed
    finally:
        ui.close()
    art = list((home / "artifacts" / "toy_join").iterdir())
    assert any((a / "manifest.json").exists() for a in art)


def test_first_visit_key_is_the_installed_webapps():
    """The localStorage key `DagsterPage` sets is the one the installed webapp's first-visit dialog reads."""
    import dagster_webserver

    chunks = Path(dagster_webserver.__file__).parent / "webapp" / "build" / "_next" / "static" / "chunks"
    nux = [p for p in chunks.glob("*.js") if "query ShouldShowNux" in p.read_text(errors="replace")]
    assert nux, f"no webapp chunk under {chunks} defines the first-visit dialog's query"
    text = nux[0].read_text(errors="replace")
    for key in SEEN_FIRST_VISIT:
        assert f'("{key}",' in text, (
            f"{nux[0].name} no longer keeps the dialog's state in localStorage {key!r}"
        )
