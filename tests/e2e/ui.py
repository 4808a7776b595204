"""Drive the Dagster UI from headless Chromium without racing its dialogs.

On localhost the Dagster webapp opens a first-visit "Join the Dagster community" dialog about a second after
it learns the instance has not shown it yet; its backdrop then intercepts every click, and on a loaded machine
that second can fall anywhere relative to the test's own steps. Pages opened here carry the browser-side record
of that dialog having been dismissed before any page script runs, so it never opens. Every click goes through
`DagsterPage.click`, which in addition closes whatever dialog covers the page (one that opens during the
click included) and waits for its backdrop to be gone, so a dialog this module does not know about delays a
click instead of failing it.
"""

from __future__ import annotations

import json
import re
import shutil
import time

from playwright.sync_api import Error as PlaywrightError

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# localStorage entries the Dagster webapp writes once a first-visit dialog was dismissed in a browser:
# CommunityNux keeps `useStateWithStorage('communityNux')` and stores JSON "1" on Skip/Submit.
# test_browser.py::test_first_visit_key_is_the_installed_webapps checks the installed build still reads it.
SEEN_FIRST_VISIT = {"communityNux": "1"}

BACKDROP = ".bp5-overlay-backdrop"
DIALOG = ".bp5-dialog, [role=dialog]"
# Buttons that close a dialog without acting on the page behind it.
DISMISS_BUTTON = re.compile(r"^\s*(Skip|Dismiss|Close|No thanks|Not now|Cancel)\s*$", re.I)
# An element inside an open dialog is meant to be clicked with the dialog open.
IN_DIALOG = (
    "xpath=ancestor::*[@role='dialog' or contains(concat(' ', normalize-space(@class), ' '), ' bp5-dialog ')]"
)

TIMEOUT_MS = 120_000


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


class DagsterPage:
    """One browser tab on a Dagster webserver at `base_url`.

    `suppress_first_visit=False` leaves the first-visit dialogs to the webapp (to exercise `click` against
    them). `dismissed` lists the first line of every dialog `click` had to close.
    """

    def __init__(self, browser, base_url: str, suppress_first_visit: bool = True):
        self.base_url = base_url
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        if suppress_first_visit:
            # Runs in every document before its own scripts; about:blank has no storage, hence the guard.
            entries = json.dumps({k: json.dumps(v) for k, v in SEEN_FIRST_VISIT.items()})
            self.context.add_init_script(
                f"try {{ for (const [k, v] of Object.entries({entries})) localStorage.setItem(k, v); }}"
                " catch (e) {}"
            )
        self.page = self.context.new_page()
        self.dismissed: list[str] = []

    def goto(self, path: str) -> None:
        self.page.goto(self.base_url + path, wait_until="domcontentloaded")

    def _dismiss_dialogs(self) -> None:
        """Close every visible dialog: its own dismiss button when it has one, Escape otherwise."""
        dialogs = self.page.locator(DIALOG).filter(visible=True)
        for i in range(dialogs.count()):
            dialog = dialogs.nth(i)
            try:
                text = dialog.inner_text(timeout=5_000).strip()
            except PlaywrightError:  # the dialog closed on its own meanwhile
                continue
            self.dismissed.append(text.splitlines()[0] if text else "<empty dialog>")
            button = dialog.get_by_role("button", name=DISMISS_BUTTON)
            try:
                if button.count():
                    button.first.click(timeout=10_000)
                else:
                    self.page.keyboard.press("Escape")
            except PlaywrightError:  # closed meanwhile, or ignored: the caller waits and tries again
                continue
        if not dialogs.count() and self.page.locator(BACKDROP).filter(visible=True).count():
            # a bare backdrop (no dialog element recognised) closes on Escape in Blueprint by default
            self.page.keyboard.press("Escape")

    def clear_overlays(self, timeout_ms: int = TIMEOUT_MS) -> None:
        """Close open dialogs and wait until no backdrop is visible; fail naming the dialog that stays."""
        backdrop = self.page.locator(BACKDROP).filter(visible=True)
        deadline = time.monotonic() + timeout_ms / 1000
        while backdrop.count():
            if time.monotonic() > deadline:
                texts = self.page.locator(DIALOG).filter(visible=True).all_inner_texts()
                raise AssertionError(f"a dialog stays open over the Dagster UI: {texts}")
            self._dismiss_dialogs()
            try:
                # each round waits for the backdrop to go; a dialog that ignored the dismissal gets another one
                backdrop.first.wait_for(state="hidden", timeout=10_000)
            except PlaywrightError:
                continue

    def click(self, target, timeout_ms: int = TIMEOUT_MS) -> None:
        """Click `target` once no dialog covers it.

        Waits for `target` to be visible, closes the dialogs open at that point, and keeps a Playwright
        locator handler armed for the click itself: should a dialog open between the check and the click,
        Playwright runs the handler before retrying and waits for the backdrop to be hidden.
        """
        target.wait_for(state="visible", timeout=timeout_ms)
        if target.locator(IN_DIALOG).count():
            target.click(timeout=timeout_ms)
            return
        self.clear_overlays(timeout_ms)
        # armed only now: while armed, the dismiss clicks themselves would trigger it
        backdrop = self.page.locator(BACKDROP).first
        self.page.add_locator_handler(backdrop, self._dismiss_dialogs)
        try:
            target.click(timeout=timeout_ms)
        finally:
            self.page.remove_locator_handler(backdrop)

    def close(self) -> None:
        self.context.close()
